"""The run report: CI maths, final table, overlay arrays, and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import math
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from xal_core.loop.metrics import RoundMetrics
from xal_core.loop.report import (
    CURVES_FILE,
    OVERLAYS_FILE,
    curve_points,
    final_table,
    final_table_html,
    final_table_markdown,
    load_overlay_arrays,
    mean_ci,
    overlay_path,
    plot_learning_curves,
    plot_overlay_grid,
    save_overlay_arrays,
    t_quantile,
    write_overlays,
    write_report,
)
from xal_core.loop.report.overlays import cam_maps
from xal_core.models import ExplainableModel, build_backbone
from xal_core.scoring import Roi, gradcam_maps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------------- CI maths
@pytest.mark.parametrize("df, expected", [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105),
                                          (9, 2.262157163), (29, 2.045229642), (1000, 1.962339081)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-8)
    assert t_quantile(0.025, df) == pytest.approx(-expected, rel=1e-8)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for p in (0.55, 0.9, 0.975, 0.995, 0.9999):
        for df in (1, 2, 3, 5.5, 17, 120, 1e5):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_mean_ci_on_known_numbers():
    value = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # s = sqrt(2.5), se = s / sqrt(5) = sqrt(0.5), t_{0.975, 4} = 2.776445105
    assert (value.mean, value.n) == (3.0, 5)
    assert value.half_width == pytest.approx(2.776445105 * math.sqrt(0.5), rel=1e-9)
    single = mean_ci([0.7])
    assert single.mean == 0.7 and math.isnan(single.half_width) and single.n == 1
    dropped = mean_ci([0.2, math.nan, 0.4])  # NaN seeds are left out
    assert dropped.n == 2 and dropped.mean == pytest.approx(0.3)
    assert dropped.half_width == pytest.approx(12.706204736 * math.sqrt(0.02) / math.sqrt(2), rel=1e-9)
    assert mean_ci([math.nan]).n == 0 and math.isnan(mean_ci([]).mean)


# ---------------------------------------------------------------------------------- synthetic run
STRATEGIES = ("random", "dual <b>&", "entropy")


def synthetic_rows(seed: int = 0) -> list[dict]:
    """3 seeds × 4 rounds for two strategies, one seed for the third; one seed's AUROC undefined."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, strategy in enumerate(STRATEGIES):
        for run_seed in range(1 if strategy == "entropy" else 3):
            for round_index in range(4):
                values = rng.uniform(0.3, 0.9, size=7) + 0.02 * round_index * (s + 1)
                metrics = RoundMetrics(*values.tolist())
                if strategy == "random" and run_seed == 2:
                    metrics = RoundMetrics(*values[:3].tolist(), math.nan, *values[4:].tolist())
                rows.append(metrics.to_row(strategy=strategy, seed=run_seed, round=round_index,
                                           labels=20 + 10 * round_index))
    return rows


def test_curve_points_and_final_table():
    rows = synthetic_rows()
    points = curve_points(rows, "accuracy")
    assert list(points) == list(STRATEGIES)
    assert [p.labels for p in points["random"]] == [20, 30, 40, 50]
    last = [r["accuracy"] for r in rows if r["strategy"] == "random" and r["round"] == 3]
    assert points["random"][-1].value == mean_ci(last)
    table = {row.strategy: row for row in final_table(rows)}
    assert table["random"].round == 3 and table["random"].labels == 50 and table["random"].seeds == 3
    assert table["random"].values["auroc"].n == 2  # one seed undefined
    assert table["entropy"].seeds == 1 and math.isnan(table["entropy"].values["accuracy"].half_width)


def test_final_table_markdown_and_html():
    rows = synthetic_rows()
    markdown = final_table_markdown(rows)
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("| Strategy | Labels | Seeds | Accuracy")
    assert len(lines) == 2 + len(STRATEGIES)
    accuracy = mean_ci(r["accuracy"] for r in rows if r["strategy"] == "random" and r["round"] == 3)
    assert f"| random | 50 | 3 | {accuracy.mean:.3f} ± {accuracy.half_width:.3f} |" in markdown
    assert "(n=2)" in markdown  # the undefined AUROC seed
    entropy = next(line for line in lines if line.startswith("| entropy"))
    assert "±" not in entropy  # one seed: no interval
    assert "| dual \\<b\\>\\& |" in markdown  # Markdown escapes, not raw HTML
    page = final_table_html(rows)
    assert "dual &lt;b&gt;&amp;" in page and "<b>&" not in page


# ---------------------------------------------------------------------------------- overlay arrays
def overlay_inputs(rng: np.random.Generator, n: int = 5, size: int = 24, ids=None) -> dict:
    roi = rng.random((n, size, size)) > 0.8
    roi[1] = False  # known empty
    known = np.ones(n, dtype=bool)
    known[2] = False
    roi[2] = False
    return dict(
        images=rng.random((n, 1, size, size)).astype(np.float32) * 3 - 1,  # outside [0, 1]: rescaled
        cams=rng.random((n, size, size)).astype(np.float32),
        roi=roi, roi_known=known,
        labels=rng.integers(0, 2, n), predictions=rng.integers(0, 2, n),
        class_names=["no finding", "lesion <x>"],
        item_ids=np.arange(n) * 7 if ids is None else np.asarray(ids),
    )


def test_overlay_arrays_round_trip(tmp_path, rng):
    inputs = overlay_inputs(rng)
    path = save_overlay_arrays(overlay_path(tmp_path / "overlays", "random"), **inputs)
    back = load_overlay_arrays(path)
    assert back.images.shape == (5, 24, 24) and back.images.dtype == np.float32
    assert back.images.min() >= 0 and back.images.max() <= 1
    np.testing.assert_array_equal(back.cams, inputs["cams"])
    np.testing.assert_array_equal(back.roi, inputs["roi"])
    np.testing.assert_array_equal(back.roi_known, inputs["roi_known"])
    np.testing.assert_array_equal(back.item_ids, inputs["item_ids"])
    assert back.class_names == ("no finding", "lesion <x>")


@pytest.mark.parametrize("change, message", [
    (dict(cams=np.full((5, 24, 24), 1.5, np.float32)), r"\[0, 1\]"),
    (dict(roi=np.zeros((5, 24, 23), bool)), "roi"),
    (dict(labels=np.array([0, 1, 2, 0, 1])), "class names"),
    (dict(item_ids=np.zeros(5, int)), "distinct"),
])
def test_overlay_arrays_rejects_bad_inputs(tmp_path, rng, change, message):
    with pytest.raises(ValueError, match=message):
        save_overlay_arrays(tmp_path / "x.npz", **{**overlay_inputs(rng), **change})


def test_overlay_path_rejects_path_like_names(tmp_path):
    with pytest.raises(ValueError):
        overlay_path(tmp_path, "../escape")


def test_cam_maps_and_write_overlays_follow_the_contract(tmp_path, gen):
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=2))
    images = torch.rand(3, 1, 32, 32, generator=gen)
    cams, predictions = cam_maps(model, images, batch_size=2)
    model.eval()
    with torch.no_grad():
        logits, features, weights = model(images)
    np.testing.assert_allclose(cams, gradcam_maps(features, weights, (32, 32)).numpy(), atol=1e-5)
    np.testing.assert_array_equal(predictions, logits.argmax(1).numpy())
    roi = Roi.from_boxes([torch.tensor([[4.0, 4.0, 20.0, 20.0]]), torch.zeros(0, 4), None], size=(32, 32))
    path = write_overlays(tmp_path / "dual.npz", model, images, roi, torch.tensor([0, 1, 1]), ["a", "b"],
                          torch.tensor([3, 1, 2]))
    back = load_overlay_arrays(path)
    assert back.roi_known.tolist() == [True, True, False] and back.roi[0].sum() == 16 * 16
    np.testing.assert_allclose(back.cams, cams)


# ---------------------------------------------------------------------------------- the report
class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.references: list[tuple[str, str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "data", "poster", "srcset", "action"):
                self.references.append((tag, name, value or ""))

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained(tmp_path, rng):
    rows = synthetic_rows()
    run_dir = tmp_path / "run"
    for strategy, ids in zip(STRATEGIES, ([0, 7, 14, 21, 28], [28, 21, 14, 7, 0], [7, 14, 0, 99, 21]), strict=True):
        save_overlay_arrays(overlay_path(run_dir / "overlays", strategy), **overlay_inputs(rng, ids=ids))
    config = {"dataset": "synthetic <script>alert(1)</script>", "seeds": [0, 1, 2], "budget": {"per_round": 10}}
    path = write_report(run_dir, title="Shortcut & friends", config=config, metrics_rows=rows)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert {"html", "head", "body", "table", "img"} <= set(parser.tags)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "&lt;script&gt;" in page and "Shortcut &amp; friends" in page and "dual &lt;b&gt;&amp;" in page
    images = [value for tag, name, value in parser.references if tag == "img"]
    assert len(images) == 2
    assert all(name == "src" for _, name, _ in parser.references)  # no links at all
    for source in images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert "http://" not in page and "https://" not in page
    text = " ".join(parser.text)
    assert "How to read this" in text and "Balanced acc." in text and "per_round" in text
    for name in (CURVES_FILE, OVERLAYS_FILE):
        assert (run_dir / name).read_bytes().startswith(PNG_SIGNATURE)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in images}
    assert embedded == {(run_dir / CURVES_FILE).read_bytes(), (run_dir / OVERLAYS_FILE).read_bytes()}


def test_report_without_overlays_says_so(tmp_path):
    path = write_report(tmp_path, title="t", config={}, metrics_rows=synthetic_rows()[:4])
    page = path.read_text(encoding="utf-8")
    assert "No overlay arrays" in page and page.count("<img") == 1
    assert not (tmp_path / OVERLAYS_FILE).exists()
    with pytest.raises(ValueError, match="no metrics rows"):
        write_report(tmp_path, title="t", config={}, metrics_rows=[])


def test_png_writers_make_valid_pngs(tmp_path, rng):
    from PIL import Image

    curves = plot_learning_curves(synthetic_rows(), tmp_path / "c.png")
    overlays = {"a": overlay_inputs(rng), "b": overlay_inputs(rng)}
    for name, inputs in overlays.items():
        save_overlay_arrays(overlay_path(tmp_path / "o", name), **inputs)
    grid = plot_overlay_grid(tmp_path / "o", tmp_path / "g.png", max_images=3)
    for path in (curves, grid):
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
    with Image.open(grid) as image:
        width, height = image.size
    assert width > height  # 3 columns, 2 rows
