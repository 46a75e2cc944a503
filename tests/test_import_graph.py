"""The import graph follows the layers of docs/architecture.md: nothing imports upwards.

Every ``import`` and ``from ... import`` of the source tree is read with ``ast`` — at module level,
inside functions (deferred imports) and under ``TYPE_CHECKING`` alike, since a deferred import is
still a dependency — and each edge between two packages is checked against :data:`LAYERS`: a
package may import its own modules and those of packages on lower layers, never a package on its
own layer or above. Two more rules: the generated wire stubs (``xal_service.wire``) are imported
by the service alone (the loop and the CLI speak the domain, the service speaks the wire), and
every package of the tree has a layer (a new package must be placed before it can be imported).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("xal_core", "xal_kernels", "xal_service", "xal_web", "xal_cli")

#: package → layer; the longest matching prefix places a module. Lower layers never import higher
#: ones, and two packages on the same layer do not import each other (data and models are siblings).
LAYERS: dict[str, int] = {
    "xal_core": 0,  # the package itself (empty): nothing but its subpackages
    "xal_core.scoring": 0,  # the contract in plain torch, its parameters
    "xal_core.access": 0,  # token files and listen addresses, for every server
    "xal_core.data": 1,  # datasets, pool store
    "xal_core.models": 1,  # backbones, export, runtimes of exported models
    "xal_kernels": 2,  # Triton and Numba kernels of the contract; fall back to xal_core.scoring
    "xal_core.acquisition": 3,  # score_batch (through xal_kernels), rankings, strategies
    "xal_core.train": 3,  # training (models only)
    "xal_core.loop": 4,  # the active-learning loop
    "xal_core.integrations": 4,  # adapters for baal and modAL
    "xal_service": 5,  # the gRPC service, its client, engines
    "xal_web": 5,  # the browser annotator (an ASGI app on the run's ledger); never the service
    "xal_cli": 6,  # the `xal` command: wires the rest
}

#: module prefixes only their own package may import.
PRIVATE = {"xal_service.wire": "xal_service"}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (or package)
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.source} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path, source: str | None = None) -> Iterator[Edge]:
    """Every xal module ``path`` imports; ``source`` parses that text instead of the file's."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            # `from package import submodule` depends on the submodule
            targets = [f"{origin}.{a.name}" if is_module(f"{origin}.{a.name}") else origin for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in SOURCES:
                yield Edge(module, target, path, node.lineno)


def layer_of(module: str) -> tuple[str, int]:
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    if not matches:
        raise KeyError(f"{module}: no layer (add its package to LAYERS and docs/architecture.md)")
    package = max(matches, key=len)
    return package, LAYERS[package]


def violation(edge: Edge) -> str | None:
    """Why ``edge`` breaks the rules, or None."""
    for private, owner in PRIVATE.items():
        if (edge.target == private or edge.target.startswith(private + ".")) and \
                not (edge.source == owner or edge.source.startswith(owner + ".")):
            return f"{edge}: only {owner} imports {private}"
    (source_package, source_layer), (target_package, target_layer) = layer_of(edge.source), layer_of(edge.target)
    if source_package == target_package or target_layer < source_layer:
        return None
    if target_package == "xal_core" and edge.target == "xal_core":
        return None  # the empty top-level package, e.g. `from xal_core import scoring` resolved above
    where = "the same layer" if target_layer == source_layer else "a higher layer"
    return (f"{edge}: {source_package} (layer {source_layer}) must not import {target_package} "
            f"(layer {target_layer}, {where})")


def source_files() -> list[Path]:
    return sorted(p for name in SOURCES for p in (ROOT / name).rglob("*.py") if "wire" not in p.relative_to(ROOT).parts[1:2])


def test_no_import_runs_up_a_layer_or_across_one():
    problems = [message for path in source_files() for edge in imports(path) if (message := violation(edge))]
    assert not problems, "\n".join(problems)


def test_every_package_has_a_layer():
    packages = {module_name(p) for name in SOURCES for p in (ROOT / name).rglob("__init__.py")}
    for package in sorted(packages):
        layer_of(package)  # KeyError names a package nobody placed


def test_the_core_imports_neither_the_service_nor_its_wire():
    edges = [edge for path in source_files() if module_name(path).startswith(("xal_core", "xal_kernels"))
             for edge in imports(path) if edge.target.startswith(("xal_service", "xal_cli"))]
    assert not edges, "\n".join(map(str, edges))


@pytest.mark.parametrize(("module", "text", "reason"), [
    ("xal_core/loop/example.py", "from xal_service.client import ScoringClient", "must not import xal_service"),
    ("xal_core/loop/example.py", "def f():\n    from xal_service.wire import scoring_pb2", "only xal_service imports"),
    ("xal_core/scoring/example.py", "import xal_kernels", "must not import xal_kernels"),
    ("xal_core/data/example.py", "from xal_core.models import export", "the same layer"),
    ("xal_cli/example.py", "from xal_service.wire import scoring_pb2 as pb", "only xal_service imports"),
    ("xal_service/example.py", "from xal_cli import main", "must not import xal_cli"),
    ("xal_service/example.py", "from .wire import scoring_pb2", None),
    ("xal_kernels/example.py", "from xal_core.scoring.roi import Roi", None),
])
def test_the_checker_catches_a_bad_edge(module, text, reason):
    found = [violation(edge) for edge in imports(ROOT / module, text)]
    found = [message for message in found if message]
    if reason is None:
        assert not found
    else:
        assert found and reason in found[0], found


def test_docs_architecture_lists_the_same_layers():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    documented: dict[str, int] = {}
    for line in text.splitlines():
        row = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if row:
            for package in re.findall(r"`([\w.]+)`", row.group(2)):
                documented[package] = int(row.group(1))
    assert documented == {package: layer for package, layer in LAYERS.items() if package != "xal_core"}
