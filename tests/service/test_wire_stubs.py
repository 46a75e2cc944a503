"""The committed stubs in xal_service/wire are exactly what protos/generate.py makes of the proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from grpc_tools import protoc

from xal_core.acquisition import ScoringConfig
from xal_service import codec
from xal_service.wire import scoring_pb2 as pb

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


def test_the_renamed_parameters_message_keeps_the_bytes_of_the_old_strategy(tmp_path):
    """``Strategy``/``strategy`` became ``ScoringParameters``/``parameters`` (issue 16: "strategy"
    meant three things) with the same field numbers: a request from a client generated from the old
    proto parses field for field, so old clients keep working."""
    import importlib
    import sys

    text = (ROOT / "protos" / "xal" / "v1" / "scoring.proto").read_text()
    old = (text.replace("package xal.v1;", "package xal.old;")
               .replace("message ScoringParameters {", "message Strategy {")
               .replace("ScoringParameters parameters = ", "Strategy strategy = "))
    assert "Strategy strategy = 6;" in old and "Strategy strategy = 3;" in old
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "scoring_old.proto").write_text(old)
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", str(tmp_path / "old" / "scoring_old.proto")]) == 0
    sys.path.insert(0, str(tmp_path))
    try:
        old_pb = importlib.import_module("old.scoring_old_pb2")
    finally:
        sys.path.remove(str(tmp_path))
    strategy = old_pb.Strategy(uncertainty=old_pb.UNCERTAINTY_MARGIN, weight=0.3, threshold=0.4,
                               fusion=old_pb.FUSION_RANK, missing_roi=old_pb.MISSING_ROI_EXCLUDE)
    for old_request, new_type in (
        (old_pb.ScoreBatchRequest(ids=[4, 2], strategy=strategy), pb.ScoreBatchRequest),
        (old_pb.StartScoringRequest(model="m", pool="p", k=9, strategy=strategy), pb.StartScoringRequest),
    ):
        parsed = new_type.FromString(old_request.SerializeToString())
        assert parsed.HasField("parameters")
        assert codec.decode_parameters(parsed.parameters) == ScoringConfig(
            uncertainty="margin", weight=0.3, threshold=0.4, fusion="rank", missing_roi="exclude")
        assert parsed.SerializeToString() == old_request.SerializeToString()
