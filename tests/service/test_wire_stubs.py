"""The committed stubs in xal_service/wire are exactly what protos/generate.py makes of the proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate_stubs", ROOT / "protos" / "generate.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    written = generator.generate(tmp_path)
    assert {p.name for p in written} == {"scoring_pb2.py", "scoring_pb2.pyi", "scoring_pb2_grpc.py"}
    for fresh in written:
        committed = ROOT / "xal_service" / "wire" / fresh.name
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `python protos/generate.py`"
