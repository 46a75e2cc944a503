"""The committed stubs in xal_service/wire are exactly what protos/generate.py makes of the proto,
and the proto generates (and, where a Java toolchain is installed, compiles) for other languages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
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


# ------------------------------------------------------------------------------ other languages
PROTOS = ROOT / "protos"
SCORING_PROTO = PROTOS / "xal" / "v1" / "scoring.proto"


def test_the_proto_names_its_packages_for_other_languages():
    """go_package, java_package, java_multiple_files and csharp_namespace are set (protos/README.md)."""
    options = pb.DESCRIPTOR.GetOptions()
    assert options.go_package == "xal/gen/go/xal/v1;xalv1"
    assert options.java_package == "org.xal.scoring.v1" and options.java_multiple_files
    assert options.java_outer_classname == "ScoringProto"
    assert options.csharp_namespace == "Xal.Scoring.V1"


def _system_protoc() -> str:
    """The system's protoc: grpcio-tools' own carries only the Python generators."""
    import shutil

    found = shutil.which("protoc")
    if found is None:
        pytest.skip("no system protoc (apt-get install protobuf-compiler): grpcio-tools' protoc writes Python only")
    return found


def test_protoc_writes_csharp_cpp_ruby_and_php_with_the_proto_s_options(tmp_path):
    import subprocess

    outputs = {language: tmp_path / language for language in ("csharp", "cpp", "ruby", "php", "java")}
    for folder in outputs.values():
        folder.mkdir()
    subprocess.run([_system_protoc(), f"-I{PROTOS}", *(f"--{language}_out={folder}" for language, folder in outputs.items()),
                    str(SCORING_PROTO)], check=True, capture_output=True, timeout=120)
    assert "namespace Xal.Scoring.V1" in (outputs["csharp"] / "Scoring.cs").read_text()
    assert (outputs["cpp"] / "xal" / "v1" / "scoring.pb.h").is_file()
    assert (outputs["java"] / "org" / "xal" / "scoring" / "v1" / "ScoreBatchRequest.java").is_file()


#: Debian packages: protobuf-compiler (protoc 3.21), protobuf-compiler-grpc-java-plugin (grpc_java_plugin),
#: libprotobuf-java and libgrpc-java (the runtime jars), libgeronimo-annotation-1.3-spec-java
#: (javax.annotation.Generated, which the generated service class carries), a JDK (javac).
JAVA_JARS = ("protobuf", "grpc-api", "grpc-stub", "grpc-protobuf", "grpc-protobuf-lite", "grpc-context", "guava",
             "geronimo-annotation-1.3-spec")


def test_java_stubs_generate_and_compile(tmp_path):
    """The messages and the gRPC service stub in Java, compiled against Debian's protobuf-java and
    grpc-java (the system protoc: code from grpcio-tools' newer protoc needs protobuf-java 4)."""
    import shutil
    import subprocess

    tools = {name: shutil.which(name) for name in ("protoc", "grpc_java_plugin", "javac")}  # protoc: the system's
    jars = [Path("/usr/share/java") / f"{name}.jar" for name in JAVA_JARS]
    missing = [name for name, found in tools.items() if found is None] + [j.name for j in jars if not j.is_file()]
    if missing:
        pytest.skip(f"no Java gRPC toolchain ({', '.join(missing)} missing): apt-get install protobuf-compiler "
                    "protobuf-compiler-grpc-java-plugin libprotobuf-java libgrpc-java "
                    "libgeronimo-annotation-1.3-spec-java default-jdk-headless")
    source, classes = tmp_path / "src", tmp_path / "classes"
    source.mkdir(), classes.mkdir()
    subprocess.run([tools["protoc"], f"-I{PROTOS}", f"--java_out={source}",
                    f"--plugin=protoc-gen-grpc-java={tools['grpc_java_plugin']}", f"--grpc-java_out={source}",
                    str(SCORING_PROTO)], check=True, capture_output=True, timeout=120)
    files = sorted(str(p) for p in source.rglob("*.java"))
    done = subprocess.run([tools["javac"], "-nowarn", "-d", str(classes), "-cp", ":".join(map(str, jars)), *files],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    compiled = classes / "org" / "xal" / "scoring" / "v1"
    assert (compiled / "ScoringGrpc.class").is_file() and (compiled / "ScoreBatchRequest.class").is_file()
