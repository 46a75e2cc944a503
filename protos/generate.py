"""Regenerate the Python stubs of ``protos/xal/v1/*.proto`` into ``xal_service/wire/``.

Run ``python protos/generate.py`` after editing a proto; ``tests/service/test_wire_stubs.py`` fails
while the committed stubs differ from what this produces. The stubs are committed (rather than
built at install time) so that installing xal needs no code generator.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
OUT = ROOT.parent / "xal_service" / "wire"
PROTOS = sorted((ROOT / "xal" / "v1").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Write ``<name>_pb2.py``, ``<name>_pb2.pyi`` and ``<name>_pb2_grpc.py`` for every proto into ``out``."""
    with tempfile.TemporaryDirectory() as scratch:
        args = ["protoc", f"-I{ROOT}", f"--python_out={scratch}", f"--pyi_out={scratch}", f"--grpc_python_out={scratch}"]
        if protoc.main(args + [str(p) for p in PROTOS]) != 0:
            raise RuntimeError("protoc failed")
        written = []
        for produced in sorted((Path(scratch) / "xal" / "v1").iterdir()):
            text = produced.read_text()
            # protoc imports siblings by proto package path (`from xal.v1 import ...`); make it
            # package-relative so no top-level `xal` module is needed or shadowed.
            text = re.sub(r"^from xal\.v1 import (\w+)", r"from . import \1", text, flags=re.M)
            target = out / produced.name
            target.write_text(text)
            written.append(target)
        return written


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for path in generate(OUT):
        print(f"wrote {path.relative_to(ROOT.parent)}")
    sys.exit(0)
