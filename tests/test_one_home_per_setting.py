"""Each setting's default is written once: in the dataclass (or signature) that is its home.

The settings that travel from the command line to the place they act are frozen dataclasses —
``ScoringConfig``, ``RoiTraining``, ``TrainRecipe``, ``Protocol``, ``DataSpec``, and the server's
``ServerConfig`` and ``ServiceLimits`` (``xal serve``'s flags) — plus the options
of ``RunSession`` and ``ActiveLearner`` that ``xal run`` passes on. This test reads the source tree
with ``ast`` and fails when the default of one of their fields is written as a literal anywhere
else: a class field (``name: T = 5000``, ``name: T = field(default=5000)``), a parameter
(``def f(name=5000)``) or an ``argparse`` flag (``add_argument("--name", default=5000)``). A copy
that reads the home (``TrainConfig.patience``, ``default_of(DataSpec, "pool_size")``,
``DEFAULT_WEIGHT``) is not a literal and passes; a field whose default refers to another
dataclass's field (``TrainRecipe.patience = TrainConfig.patience``) has its home there.

A few parameters share a setting's name and are another setting (an evaluation batch size is not
the training batch size): :data:`NAMESAKES` lists them, each with the reason. ``None`` defaults
("not given") are not settings and are not compared.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xal_cli.session import RunSession
from xal_core.loop.data_spec import DataSpec
from xal_core.loop.learner import ActiveLearner
from xal_core.loop.protocol import Protocol
from xal_core.loop.recipe import TrainRecipe
from xal_core.scoring.parameters import ScoringConfig
from xal_core.train.roi_training import RoiTraining
from xal_service.server.config import ServerConfig, ServiceLimits

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("xal_core", "xal_kernels", "xal_cli", "xal_web", "xal_service")

#: the homes: dataclasses (every field with a default value) and callables (the parameters named)
SETTINGS: tuple[type, ...] = (ScoringConfig, RoiTraining, TrainRecipe, Protocol, DataSpec, ServerConfig, ServiceLimits)
OPTIONS: tuple[tuple[Any, tuple[str, ...]], ...] = (
    (RunSession, ("scorer", "server", "oracle")),
    (ActiveLearner, ("overlay_images",)),
)

#: (path prefix, name) → why a literal default of that name there is another setting
NAMESAKES: dict[tuple[str, str], str] = {
    ("xal_core/train/config.py", "epochs"):
        "fit's own budget for a direct caller (with early stopping); the loop's per-round budget is TrainRecipe's",
    ("xal_core/loop/metrics.py", "batch_size"): "images per evaluation forward pass, not per training step",
    ("xal_core/loop/report/overlays.py", "batch_size"): "images per forward pass of the report's CAM grid",
    ("xal_core/data/", "size"): "a dataset adapter's own frame, for a caller that opens the dataset directly",
    ("xal_cli/ingest.py", "size"): "xal ingest's frame for a pool store of its own, not a run's",
    ("xal_core/data/", "test_fraction"): "the split column a DICOMweb ingest writes into a generic dataset folder",
    ("xal_cli/ingest.py", "test_fraction"): "xal ingest's split column for --dataset-out (as above)",
    ("xal_cli/ingest.py", "workers"): "xal ingest's decoding processes, not the server's handler threads",
    ("xal_core/data/", "workers"): "an ingest's decoding processes, not the server's handler threads",
    ("xal_service/engines/ray/config.py", "workers"): "Ray scorer actors (--ray-workers), not handler threads",
    ("xal_web/", "listen"): "the annotation page's address (xal annotate --listen), not the gRPC service's",
    ("xal_service/client/scoring_client.py", "max_message_mb"):
        "the client's own receive cap: a client talks to servers configured in other ways",
    ("xal_service/server/servicer.py", "scoring_threads"):
        "the resolved thread count of a pool the caller made; ServerConfig's 0 (one per CPU) is resolved before",
    ("xal_service/registry/registry.py", "trust_torchscript_uploads"):
        "a direct caller's registry refuses code too; the server passes ServerConfig's (the registry layer "
        "imports nothing of the server's)",
}


@dataclass(frozen=True)
class Definition:
    """A literal default written in the source: ``name`` = ``value`` at ``path:line``."""

    name: str
    value: str
    path: str
    line: int
    kind: str  # "field", "parameter" or "flag"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} {self.name} = {self.value}"


def is_literal(node: ast.expr | None) -> bool:
    """A constant other than None, a negative number, or a tuple/list of those."""
    if isinstance(node, ast.Constant):
        return node.value is not None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return isinstance(node.operand, ast.Constant)
    if isinstance(node, ast.Tuple | ast.List):
        return bool(node.elts) and all(is_literal(element) for element in node.elts)
    return False


def field_value(node: ast.AnnAssign) -> ast.expr | None:
    """The default a class-body declaration gives: its value, or ``field(default=...)``'s."""
    value = node.value
    if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", None)) == "field":
        return next((keyword.value for keyword in value.keywords if keyword.arg == "default"), None)
    return value


def flag_name(call: ast.Call) -> str | None:
    """The attribute an ``add_argument`` call fills: its ``dest``, else its first long option."""
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    dest = keywords.get("dest")
    if isinstance(dest, ast.Constant) and isinstance(dest.value, str):
        return dest.value
    if isinstance(dest, ast.Call):  # dest=RoiTraining.key("loss"): the prefixed field name
        arguments = [argument.value for argument in dest.args if isinstance(argument, ast.Constant)]
        owner = getattr(dest.func, "value", None)
        if arguments and isinstance(owner, ast.Name) and owner.id == "RoiTraining":
            return RoiTraining.key(arguments[0])
    for argument in call.args:
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str) and argument.value.startswith("--"):
            return argument.value[2:].replace("-", "_")
    return None


def prefix_of(path: str, class_name: str) -> str:
    """The prefix a settings class's fields carry outside it (``RoiTraining``'s ``roi_``)."""
    for owner in SETTINGS:
        if owner.__name__ == class_name and relative(inspect.getsourcefile(owner)) == path:
            return getattr(owner, "RECORD_PREFIX", "")
    return ""


def relative(path: str | Path | None) -> str:
    return Path(path).resolve().relative_to(ROOT).as_posix()


def definitions(path: str, source: str | ast.AST) -> Iterator[Definition]:
    """Every literal default that ``source`` (the text of ``path``, or a part of its tree) writes."""
    for node in ast.walk(ast.parse(source) if isinstance(source, str) else source):
        if isinstance(node, ast.ClassDef):
            prefix = prefix_of(path, node.name)
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) \
                        and is_literal(value := field_value(statement)):
                    yield Definition(prefix + statement.target.id, ast.unparse(value), path, statement.lineno, "field")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            positional = [*arguments.posonlyargs, *arguments.args]
            pairs = [*zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults, strict=True),
                     *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)]
            for argument, default in pairs:
                if is_literal(default):
                    yield Definition(argument.arg, ast.unparse(default), path, default.lineno, "parameter")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            default = next((keyword.value for keyword in node.keywords if keyword.arg == "default"), None)
            if is_literal(default) and (name := flag_name(node)):
                yield Definition(name, ast.unparse(default), path, node.lineno, "flag")


def tree_definitions() -> list[Definition]:
    files = sorted(p for name in SOURCES for p in (ROOT / name).rglob("*.py") if "wire" not in p.parts)
    return [d for p in files for d in definitions(relative(p), p.read_text(encoding="utf-8"))]


def class_node(owner: type) -> tuple[str, ast.ClassDef]:
    path = relative(inspect.getsourcefile(owner))
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return path, next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == owner.__name__)


def home(owner: type, name: str) -> tuple[str, int] | None:
    """Where field ``name`` of dataclass ``owner`` writes its default as a literal, following a default
    that refers to another class's field; None when the default is a named constant or a factory."""
    path, node = class_node(owner)
    statement = next(s for s in node.body if isinstance(s, ast.AnnAssign) and getattr(s.target, "id", None) == name)
    value = field_value(statement)
    if is_literal(value):
        return path, statement.lineno
    if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
        other = getattr(sys.modules[owner.__module__], value.value.id)
        return home(other, value.attr)
    return None


def settings() -> dict[str, tuple[str, set[tuple[str, int]]]]:
    """external name → (the setting, e.g. ``RoiTraining.weight``; the literal homes it may be written at)."""
    out: dict[str, tuple[str, set[tuple[str, int]]]] = {}
    for owner in SETTINGS:
        prefix = getattr(owner, "RECORD_PREFIX", "")
        for field in dataclasses.fields(owner):
            if field.default is None or field.default is dataclasses.MISSING:
                continue  # "not given", or a nested settings object (``Protocol.train``) checked as its own class
            where = home(owner, field.name)
            out[prefix + field.name] = (f"{owner.__name__}.{field.name}", set() if where is None else {where})
    for owner, names in OPTIONS:
        path, node = class_node(owner)
        init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
        source = ast.Module(body=[init], type_ignores=[])
        for definition in definitions(path, source):
            if definition.name in names:
                out[definition.name] = (f"{owner.__name__}({definition.name}=)", {(path, definition.line)})
    return out


def namesake(definition: Definition) -> bool:
    return any(definition.path.startswith(prefix) and definition.name == name for prefix, name in NAMESAKES)


def duplicates(found: list[Definition]) -> list[str]:
    """One line per literal default of a setting written outside its home."""
    homes = settings()
    problems = []
    for definition in found:
        if definition.name not in homes or namesake(definition):
            continue
        setting, allowed = homes[definition.name]
        if (definition.path, definition.line) not in allowed:
            where = ", ".join(f"{p}:{line}" for p, line in sorted(allowed)) or "a named constant"
            problems.append(f"{definition}: a second default of {setting} (its home: {where}); read it from there")
    return problems


def test_every_setting_default_is_written_once():
    problems = duplicates(tree_definitions())
    assert not problems, "\n".join(problems)


def test_homes_are_where_the_literal_is_written():
    homes = settings()
    assert {path for path, _ in homes["patience"][1]} == {"xal_core/train/config.py"}  # TrainRecipe reads TrainConfig's
    assert {path for path, _ in homes["output_stride"][1]} == {"xal_core/models/backbones.py"}
    assert {path for path, _ in homes["roi_weight"][1]} == {"xal_core/train/roi_training.py"}
    assert {path for path, _ in homes["pool_size"][1]} == {"xal_core/loop/data_spec.py"}
    assert {path for path, _ in homes["mc_passes"][1]} == {"xal_core/loop/protocol.py"}
    assert {path for path, _ in homes["overlay_images"][1]} == {"xal_core/loop/learner.py"}
    assert homes["threshold"][1] == set()  # ScoringConfig's defaults are parameters.py's named constants


def test_a_stray_copy_of_a_default_is_caught():
    stray = """
def train(roi_weight: float = 1.0, *, pool_size=5000, seed=0, device=None): ...
class Options:
    patience: int = field(default=3)
    threshold: float = 0.5
def add(parser):
    parser.add_argument("--mc-passes", type=int, default=20)
    parser.add_argument("--roi-swap-prob", dest=RoiTraining.key("swap_prob"), type=float, default=-0.5)
    parser.add_argument("--oracle", default="file")
    parser.add_argument("--pool-size", default=default_of(DataSpec, "pool_size"))  # read from the home: fine
    parser.add_argument("--label-batch", dest="batch_size", default=256)
"""
    problems = duplicates(list(definitions("xal_cli/example.py", stray)))
    flagged = sorted(problem.split(": ")[1].split(" = ")[0].split()[-1] for problem in problems)
    assert flagged == ["batch_size", "mc_passes", "oracle", "patience", "pool_size", "roi_swap_prob", "roi_weight",
                       "threshold"], problems
    assert not duplicates(list(definitions("xal_core/loop/metrics.py", "def evaluate(batch_size=256): ...")))
