"""Interleaved A/B/… of ``bench/service.py`` across servers (commits, event loops, patches).

Why a tool of its own: on a shared 2-core host a single ``bench/service.py`` run moves ±15 %
from one minute to the next, so two servers can only be compared in rounds that run each of
them back to back, and by ratios taken *within* a round (paired) before any median. The rounds
and the aggregation used to live in throwaway shell scripts; here they are one command whose
JSON records how it was made.

``run`` makes the rounds: each side is ``NAME=TREE`` (a checkout, e.g. ``git worktree add
--detach /tmp/threaded b51c593^``) with optional extra ``bench/service.py`` arguments after
``::`` (``asyncio=.::--event-loop asyncio``). Every round runs every side once, in an order that
rotates from round to round so that no side always runs first (a host's drift then spreads
over all of them). Each run is ``PYTHONPATH=TREE python TREE/bench/service.py --pool-items N
--out …`` with this interpreter, in TREE, so each side's own code serves.

``summarize`` aggregates runs made elsewhere (``NAME=FILE,FILE,…``, round *i* of every side at
position *i*).

The JSON: per side and metric the median and range over rounds; for every pair of sides (the
later over the earlier in the order given, so every side over the first, the baseline), the ratio
per round and the median of those ratios. Read the medians of
ratios, not single rounds. Lower is better for ``p50_ms``/``p99_ms``, higher for ``items_per_s``.

Example (how ``bench/results/service-cpu-ab-amd.json`` was made)::

    git worktree add --detach /tmp/xal-threaded b51c593^
    python bench/service_ab.py run --rounds 7 --pool-items 2000 \\
        --side threaded=/tmp/xal-threaded --side uvloop=. --out bench/results/service-cpu-ab-amd.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from timing import cpu_name, paired_median_ratio  # noqa: E402 - bench/timing.py

# The metrics compared: every concurrency row of bench/service.py, and its float16 one-client row.
ROW_METRICS = ("p50_ms", "p99_ms", "items_per_s")
FP16_METRICS = ("p50_ms", "p99_ms")


@dataclass(frozen=True)
class Side:
    """One server under comparison: a name, the checkout it runs from, extra bench arguments."""

    name: str
    tree: Path
    extra: tuple[str, ...] = ()


def parse_side(text: str) -> Side:
    """``NAME=TREE`` or ``NAME=TREE::ARGS`` (ARGS split on spaces) — a clear error otherwise."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"--side {text!r}: expected NAME=TREE or NAME=TREE::EXTRA ARGS")
    tree, _, extra = rest.partition("::")
    path = Path(tree).resolve()
    if not (path / "bench" / "service.py").is_file():
        raise argparse.ArgumentTypeError(f"--side {text!r}: {path} has no bench/service.py (not an xal checkout?)")
    return Side(name, path, tuple(extra.split()))


def run_values(record: dict) -> dict[str, float]:
    """The compared numbers of one ``bench/service.py`` JSON, flat: ``{"4_clients_p50_ms": …}``."""
    values = {f"{row['clients']}_clients_{key}": row[key] for row in record["score_batch"] for key in ROW_METRICS}
    half = record["score_batch_fp16_features"]
    values.update({f"fp16_1_client_{key}": half[key] for key in FP16_METRICS})
    return values


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Medians, ranges and paired per-round ratios of every side against each side before it.

    ``runs`` maps each side (the first is the baseline) to its runs' JSON records in round order;
    every side needs the same number of rounds, since round *i*'s ratio pairs the sides' *i*-th runs.
    """
    names = list(runs)
    if len(names) < 2:
        raise ValueError(f"an A/B needs at least two sides, got {names}")
    counts = {name: len(records) for name, records in runs.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise ValueError(f"every side needs the same, non-zero number of rounds: {counts}")
    values = {name: [run_values(r) for r in records] for name, records in runs.items()}
    baseline = names[0]
    metrics = list(values[baseline][0])
    spread = {name: {m: {"median": statistics.median(v[m] for v in rounds), "min": min(v[m] for v in rounds),
                         "max": max(v[m] for v in rounds)} for m in metrics} for name, rounds in values.items()}
    per_round, median_ratio = {}, {}
    for position, earlier in enumerate(names):
        for later in names[position + 1:]:
            key = f"{later}_over_{earlier}"
            per_round[key] = {m: [b[m] / a[m] for a, b in zip(values[earlier], values[later], strict=True)]
                              for m in metrics}
            median_ratio[key] = {m: paired_median_ratio([b[m] for b in values[later]], [a[m] for a in values[earlier]])
                                 for m in metrics}
    return {
        "how_to_read": "ratios are side/baseline within each round (paired), then the median over rounds; "
                       "lower is better for latencies (p50_ms, p99_ms), higher for items_per_s",
        "rounds": counts[baseline],
        "baseline": baseline,
        "median_ratio": median_ratio,
        "per_round_ratio": per_round,
        "median_and_range": spread,
        "runs": {name: [{"when": r["when"], "load_average_start": r["load_average"]["start"][0],
                         "event_loop": r.get("server_event_loop"), "values": v}
                        for r, v in zip(runs[name], values[name], strict=True)] for name in names},
    }


def rotated(sides: list[Side], round_index: int) -> list[Side]:
    """This round's order: the list rotated by the round's number, so each side leads in turn."""
    shift = round_index % len(sides)
    return sides[shift:] + sides[:shift]


def run_rounds(sides: list[Side], rounds: int, pool_items: int, workdir: Path) -> dict[str, list[dict]]:
    """Every side once per round (rotating order); a failed run stops everything with its stderr."""
    runs: dict[str, list[dict]] = {side.name: [] for side in sides}
    total, done, started = rounds * len(sides), 0, time.monotonic()
    for index in range(rounds):
        for side in rotated(sides, index):
            out = workdir / f"{side.name}_{index}.json"
            command = [sys.executable, str(side.tree / "bench" / "service.py"), "--pool-items", str(pool_items),
                       "--out", str(out), *side.extra]
            env = {**os.environ, "PYTHONPATH": str(side.tree)}
            began = time.monotonic()
            finished = subprocess.run(command, cwd=side.tree, env=env, capture_output=True, text=True)
            if finished.returncode != 0:
                raise SystemExit(f"round {index + 1}, side {side.name}: {' '.join(command)} exited "
                                 f"{finished.returncode}:\n{finished.stderr[-3000:]}")
            runs[side.name].append(json.loads(out.read_text()))
            done += 1
            elapsed = time.monotonic() - started
            print(f"round {index + 1}/{rounds} {side.name}: {time.monotonic() - began:.0f} s "
                  f"[{done}/{total} runs, ~{elapsed / done * (total - done) / 60:.0f} min left]", flush=True)
    return runs


def write(record: dict, out: Path) -> None:
    """Whole file or nothing: written beside ``out`` and renamed over it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    partial.replace(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="make the interleaved rounds, then summarize them")
    run.add_argument("--side", action="append", type=parse_side, required=True, metavar="NAME=TREE[::ARGS]",
                     help="a server to compare (repeat; the first is the baseline)")
    run.add_argument("--rounds", type=int, default=5, help="rounds, each running every side once (default 5)")
    run.add_argument("--pool-items", type=int, default=2000, help="bench/service.py --pool-items (default 2000)")
    run.add_argument("--keep-runs", type=Path, default=None, help="keep each run's JSON in this folder")
    run.add_argument("--note", default="", help="anything the sides' trees do not say (a patch), recorded in the JSON")
    run.add_argument("--out", type=Path, required=True)
    summary = commands.add_parser("summarize", help="aggregate runs already made")
    summary.add_argument("--side", action="append", required=True, metavar="NAME=FILE,FILE,...",
                         help="a side's runs in round order (repeat; the first is the baseline)")
    summary.add_argument("--note", default="", help="how the runs were made, recorded in the JSON")
    summary.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "run":
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        if len({side.name for side in args.side}) != len(args.side) or len(args.side) < 2:
            parser.error("give at least two --side, each with its own name")
        with tempfile.TemporaryDirectory() as scratch:
            workdir = args.keep_runs or Path(scratch)
            workdir.mkdir(parents=True, exist_ok=True)
            runs = run_rounds(args.side, args.rounds, args.pool_items, workdir)
        how = {"command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
               "sides": {s.name: {"tree": str(s.tree), "extra_args": list(s.extra)} for s in args.side},
               "pool_items": args.pool_items, "note": args.note}
    else:
        runs = {}
        for text in args.side:
            name, sep, files = text.partition("=")
            if not sep or not files:
                parser.error(f"--side {text!r}: expected NAME=FILE,FILE,...")
            runs[name] = [json.loads(Path(f).read_text()) for f in files.split(",")]
        how = {"note": args.note}
    record = {"benchmark": "service A/B: " + " vs ".join(runs), "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"processor": cpu_name(), "cpus": os.cpu_count()}, **how, **summarize(runs)}
    write(record, args.out)
    print(json.dumps(record["median_ratio"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
