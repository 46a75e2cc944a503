"""``xal fixtures`` writes replicas that ``xal ingest`` detects and ingests end to end."""

from __future__ import annotations

import pytest

from xal_cli.main import main
from xal_core.data import PoolStore


@pytest.mark.parametrize(("dataset", "extra", "count", "roi_format"), [
    ("brats", [], 28, "mask"),  # 2 cases × 14 slices of the default 32×32×16 replica
    ("brats", ["--year", "2021"], 28, "mask"),
    ("vindr", [], 2, "boxes"),
    ("vindr", ["--layout", "physionet"], 2, "boxes"),
    ("siim", [], 2, "boxes"),
])
def test_fixtures_then_ingest(tmp_path, capsys, dataset, extra, count, roi_format):
    replica = tmp_path / "replica"
    assert main(["fixtures", dataset, "--out", str(replica), "--n", "2", *extra]) == 0
    assert main(["ingest", str(replica), "--out", str(tmp_path / "pool"), "--size", "24", "--quiet"]) == 0
    assert f"{count} items written, 0 skipped" in capsys.readouterr().out
    pool = PoolStore.open(tmp_path / "pool")
    assert len(pool) == count and pool.roi_format == roi_format and pool.manifest["sources"][0]["kind"] == dataset


def test_fixtures_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert main(["fixtures", "siim", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
