"""The import graph follows the layers of docs/architecture.md: nothing imports upwards.

Every ``import`` and ``from ... import`` of the source tree is read with ``ast`` — at module level,
inside functions (deferred imports) and under ``TYPE_CHECKING`` alike, since a deferred import is
still a dependency — and each edge between two packages is checked against :data:`LAYERS`: a
package may import its own modules and those of packages on lower layers, never a package on its
own layer or above. Two more rules: the generated wire stubs (``xal_service.wire``) are imported
by the service alone (the loop, the CLI, the annotator and the benchmarks in ``bench/`` speak the
domain, the service speaks the wire), and every package of the tree has a layer (a new package
must be placed before it can be imported).

Inside the service, each folder is a part (docs/architecture.md, "The service package") and
:data:`SERVICE_PARTS` says which parts it may import: the client imports the codec and the wire,
never the server, the jobs or the registry, so a client-only user sees from the tree what a
client loads.
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

#: the parts of xal_service → the other parts each may import (its own modules always); the longest
#: matching prefix places a module. client → codec → wire; server → jobs → engines; server → codec;
#: jobs and server → registry; codec, registry, jobs and server → errors.
SERVICE_PARTS: dict[str, set[str]] = {
    "xal_service.wire": set(),  # the generated stubs
    "xal_service.errors": set(),  # request errors as gRPC status codes
    "xal_service.process_memory": set(),  # glibc malloc: keep freed memory, hand it back once a round
    "xal_service.codec": {"xal_service.errors", "xal_service.wire"},  # wire ⇄ domain, both sides
    "xal_service.client": {"xal_service.codec", "xal_service.wire"},  # ScoringClient, ServiceScorer
    "xal_service.engines": set(),  # Ray Data: xal_core only
    "xal_service.registry": {"xal_service.errors", "xal_service.process_memory"},  # models and pools by name
    "xal_service.jobs": {"xal_service.registry", "xal_service.engines", "xal_service.errors",
                         "xal_service.process_memory"},
    "xal_service.server": {"xal_service.jobs", "xal_service.registry", "xal_service.engines",
                           "xal_service.codec", "xal_service.errors", "xal_service.wire",
                           "xal_service.process_memory"},
}


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


def private_violation(edge: Edge) -> str | None:
    """Why ``edge`` imports a module private to another package, or None."""
    for private, owner in PRIVATE.items():
        if (edge.target == private or edge.target.startswith(private + ".")) and \
                not (edge.source == owner or edge.source.startswith(owner + ".")):
            return f"{edge}: only {owner} imports {private}"
    return None


def service_part(module: str) -> str | None:
    """The part of xal_service that holds ``module``; None for the package itself and outside it."""
    matches = [p for p in SERVICE_PARTS if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def part_violation(edge: Edge) -> str | None:
    """Why ``edge``, between two parts of xal_service, breaks :data:`SERVICE_PARTS`, or None."""
    source, target = service_part(edge.source), service_part(edge.target)
    if source is None or target is None or source == target or target in SERVICE_PARTS[source]:
        return None
    allowed = ", ".join(sorted(SERVICE_PARTS[source])) or "no other part"
    return f"{edge}: {source} must not import {target} (it imports {allowed})"


def violation(edge: Edge) -> str | None:
    """Why ``edge`` breaks the rules, or None."""
    if message := private_violation(edge) or part_violation(edge):
        return message
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


def test_every_import_names_a_module_of_the_tree():
    """A relative import left behind by a move (``from .engines import x`` one folder too deep) fails
    only when that line runs; here it fails at once."""
    missing = [str(edge) for path in source_files() for edge in imports(path) if not is_module(edge.target)]
    assert not missing, "\n".join(missing)


def test_every_service_module_lies_in_a_part():
    modules = {module_name(p) for p in (ROOT / "xal_service").rglob("*.py")} - {"xal_service"}
    assert not {m for m in modules if service_part(m) is None}, "add the folder to SERVICE_PARTS and docs/architecture.md"


def test_a_client_loads_nothing_of_the_server_side():
    """Everything of xal_service that importing a client module loads, followed edge by edge."""
    edges: dict[str, set[str]] = {}
    for path in source_files():
        for edge in imports(path):
            edges.setdefault(edge.source, set()).add(edge.target)
    seen, todo = set(), [m for m in edges if service_part(m) == "xal_service.client"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(edges.get(module, ()))
    loaded = {service_part(m) for m in seen if m.startswith("xal_service.")}
    assert loaded <= {"xal_service.client", "xal_service.codec", "xal_service.errors", "xal_service.wire"}, loaded


def test_the_benchmarks_speak_the_domain():
    """bench/ is a caller like any other: it may import every package, never the wire stubs."""
    problems = [message for path in sorted((ROOT / "bench").rglob("*.py")) for edge in imports(path)
                if (message := private_violation(edge))]
    assert not problems, "\n".join(problems)


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
    ("xal_service/client/example.py", "from ..server import limits", "must not import xal_service.server"),
    ("xal_service/client/example.py", "from xal_service.jobs.manager import JobSpec", "must not import xal_service.jobs"),
    ("xal_service/client/example.py", "def f():\n    from ..registry.roots import PathRoots", "must not import xal_service.registry"),
    ("xal_service/client/example.py", "from .. import codec\nfrom ..wire import scoring_pb2", None),
    ("xal_service/jobs/example.py", "from ..server.statistics import Statistics", "must not import xal_service.server"),
    ("xal_service/registry/example.py", "from ..jobs import pins", "must not import xal_service.jobs"),
    ("xal_service/server/example.py", "from ..jobs.manager import JobManager\nfrom .. import codec", None),
    ("bench/example.py", "from xal_service.wire import scoring_pb2", "only xal_service imports"),
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


# ---------------------------------------------------------------------- cycles hidden by deferred imports
def runtime_imports(path: Path, source: str | None = None) -> Iterator[tuple[Edge, bool]]:
    """``(edge, deferred)`` for every import of ``path`` that runs: as the module is imported
    (``deferred`` False: module level, class bodies) or inside a function (True). Imports under
    ``if TYPE_CHECKING:`` never run and are left out."""

    def visit(node: ast.AST, deferred: bool) -> Iterator[tuple[Edge, bool]]:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.orelse:
                yield from visit(statement, deferred)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for edge in imports(path, ast.unparse(node)):
                yield Edge(edge.source, edge.target, path, node.lineno), deferred
        else:
            inner = deferred or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            for child in ast.iter_child_nodes(node):
                yield from visit(child, inner)

    yield from visit(ast.parse(source if source is not None else path.read_text(encoding="utf-8")), False)


def import_route(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """The shortest chain of imports from ``start`` to ``goal`` (both included), or None."""
    previous: dict[str, str | None] = {start: None}
    queue = [start]
    for module in queue:
        if module == goal:
            route = [module]
            while (step := previous[route[-1]]) is not None:
                route.append(step)
            return route[::-1]
        for target in sorted(graph.get(module, ())):
            if target not in previous:
                previous[target] = module
                queue.append(target)
    return None


def hidden_cycles(sources: dict[Path, str | None]) -> list[str]:
    """One line per import of module B deferred into a function of module A where B, as it runs
    (at import time or in its own functions), imports A back: a cycle the deferral only hides.

    Deferred imports of other packages (monai, onnxruntime, ray, triton, numba, …) are no edge of
    the tree and never count; nor do imports under ``TYPE_CHECKING``.
    """
    graph: dict[str, set[str]] = {}
    deferred: list[Edge] = []
    for path, source in sources.items():
        for edge, is_deferred in runtime_imports(path, source):
            graph.setdefault(edge.source, set()).add(edge.target)
            if is_deferred:
                deferred.append(edge)
    problems = []
    for edge in deferred:
        route = import_route(graph, edge.target, edge.source)
        if route is not None:
            problems.append(f"{edge} inside a function, hiding the cycle {' → '.join([edge.source, *route])}: "
                            "give the piece both need a module of its own")
    return problems


def test_no_deferred_import_hides_a_cycle():
    problems = hidden_cycles({path: None for path in source_files()})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("a", "b", "caught"), [
    ("def f():\n    from xal_core.loop.example_b import g", "from xal_core.loop.example_a import f", True),
    ("def f():\n    from xal_core.loop.example_b import g", "def g():\n    from xal_core.loop.example_a import f", True),
    ("def f():\n    from .example_b import g", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                              "    from .example_a import f", False),
    ("def f():\n    import monai\n    import onnxruntime", "import xal_core.loop.example_a", False),
    ("def f():\n    from xal_core.loop.example_b import g", "import numpy", False),
])
def test_the_cycle_checker_tells_a_hidden_cycle_from_a_lazy_import(a, b, caught):
    sources = {ROOT / "xal_core/loop/example_a.py": a, ROOT / "xal_core/loop/example_b.py": b}
    assert bool(hidden_cycles(sources)) is caught
