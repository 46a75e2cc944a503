"""``report.html``: one self-contained page per run (images embedded as base64 data URIs).

The page holds the run configuration, the final table, the learning curves and the Grad-CAM
overlay grid, with a short "how to read this". The two figures are also written next to it as
``learning_curves.png`` and ``cam_overlays.png``. Every string that comes from the user (title,
configuration, strategy and class names) is HTML-escaped; the page references no file and no URL.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from .curves import plot_learning_curves
from .final_table import final_table_html
from .overlays import load_overlay_dir, plot_overlay_grid
from .stats import strategies

__all__ = ["CURVES_FILE", "OVERLAYS_FILE", "REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"
CURVES_FILE = "learning_curves.png"
OVERLAYS_FILE = "cam_overlays.png"

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
table.final td { text-align: right; } table.final td:first-child { text-align: left; }
img { max-width: 100%; height: auto; }
.note { color: #555; font-size: 0.9em; }
"""

_HOW_TO_READ = """
<p>Every number is measured on the held-out test split after each acquisition round. The
<b>learning curves</b> plot accuracy and CAM&ndash;ROI Dice against the number of labelled images:
one line per strategy, the mean over seeds, with a shaded 95% t-interval over seeds (a strategy run
with one seed has no band). A strategy that is better at finding the images the model gets right
<i>for the wrong reason</i> should raise the Dice curve, not only the accuracy curve.</p>
<p>The <b>final table</b> gives each strategy's metrics at its last round as mean &plusmn; 95%
half-width over seeds. CAM Dice, soft Dice and ROI energy compare the Grad-CAM of the predicted class
with the radiologist's ROI, by xal's scoring contract (<code>docs/contract.md</code> in the xal source:
the map thresholded at &tau;, Dice 1 when map and ROI are both empty), averaged over the test images
whose ROI is known.</p>
<p>The <b>overlay grid</b> shows the same test images for every strategy at the final round (seed 0):
the Grad-CAM as colour over the grayscale image, the ROI outlined in green; a red title marks a wrong
prediction. Attention outside the outline is a model looking at something other than the lesion.</p>
"""


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    config: Mapping[str, object],
    metrics_rows: Iterable[Mapping[str, object]],
    overlays_dir: str | Path | None = None,
    max_images: int = 8,
) -> Path:
    """Write ``RUN_DIR/report.html`` (and the two PNGs beside it); returns the HTML's path.

    Args:
        run_dir: the run folder.
        title: the page title.
        config: the run configuration, shown as a key/value table (nested values as JSON).
        metrics_rows: ``metrics.csv`` rows (``read_metrics_csv``), at least one.
        overlays_dir: the folder of ``<strategy>.npz`` overlay arrays; ``RUN_DIR/overlays`` by default.
            Without any, the page says so instead of showing a grid.
        max_images: columns of the overlay grid.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = list(metrics_rows)
    if not rows:
        raise ValueError("write_report: no metrics rows")
    overlays_dir = run_dir / "overlays" if overlays_dir is None else Path(overlays_dir)

    curves = plot_learning_curves(rows, run_dir / CURVES_FILE)
    overlays = load_overlay_dir(overlays_dir, order=strategies(rows))
    if overlays:
        grid = _image(plot_overlay_grid(overlays, run_dir / OVERLAYS_FILE, max_images=max_images),
                      "Grad-CAM overlays with ROI outlines")
    else:
        grid = (f'<p class="note">No overlay arrays (<code>&lt;strategy&gt;.npz</code>) in '
                f"<code>{html.escape(str(overlays_dir))}</code>.</p>")

    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>How to read this</h2>",
        _HOW_TO_READ,
        "<h2>Final round</h2>",
        final_table_html(rows),
        "<h2>Learning curves</h2>",
        _image(curves, "Learning curves: accuracy and CAM-ROI Dice against labels"),
        "<h2>Grad-CAM overlays at the final round</h2>",
        grid,
        "<h2>Run configuration</h2>",
        _config_table(config),
        "</body>",
        "</html>",
        "",
    ])
    path = run_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _config_table(config: Mapping[str, object]) -> str:
    if not config:
        return '<p class="note">No configuration recorded.</p>'
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td><code>{html.escape(_value(value))}</code></td></tr>\n"
        for key, value in config.items()
    )
    return f'<table class="config">\n{rows}</table>\n'


def _value(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, default=str, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)
