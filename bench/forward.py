"""Forward-pass throughput of the explainable model per runtime and backbone on this host.

The ResNets and DenseNet at 224² with 3 channels; ``smallcnn8``, the cxr-sim study's model (SmallCNN
of width 8), at its own 64² with 1 channel. Providers, measured in the same run on the same inputs
and weights:

* ``torch-eager`` — ``xal_core.models.ExplainableModel`` under ``torch.inference_mode`` (the baseline);
* ``torch-eager-channels-last`` — the same with model and input in channels-last memory format
  (oneDNN's convolutions; for small channel counts they are much faster than the default layout's);
* ``onnxruntime-cpu`` — the file written by ``xal_core.models.export(format="onnx")``, run by
  ``xal_core.models.runtime`` on ONNX Runtime's CPU provider;
* ``torchscript`` — the ``format="torchscript"`` file, run by ``xal_core.models.runtime``.

Each provider returns the same three outputs (logits, features, CAM weights); the script checks that
they agree with eager torch (1e-3) before timing. It prints images/s (median of repeats) and the
ratio against eager torch, and writes JSON to ``bench/results/forward-cpu.json``
(``--quick``: ResNet-18 only, fewer repeats, JSON to ``forward-cpu-quick.json``).

To keep a full run within about three minutes on two cores, the big backbones (ResNet-50,
DenseNet121) are timed with smaller batches and fewer repeats; the table says which.

Threads. All providers use the same intra-op thread count, ``--threads`` (default 1). On a shared
2-core host a second torch thread is worse than none: OpenMP spin-waits for the core the other tenant
is using (measured here: ResNet-18 at 224², 0.06 s per image with 1 thread, 0.5 s with 2 while another
process was busy). On a dedicated host pass ``--threads`` with the core count. The load average at
the start is recorded with the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import torch
from rich.console import Console
from rich.table import Table
from timing import cpu_name, time_calls  # bench/timing.py (scripts run with bench/ on sys.path)

from xal_core.models import BackboneConfig, ExplainableModel, build_backbone, export
from xal_core.models.runtime import load

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 224


class Plan(NamedTuple):
    """How one backbone is timed: smaller batches and fewer repeats for the expensive ones; the
    SmallCNN at the cxr-sim study's input (1 × 64²) rather than 3 × 224²."""

    batch: int
    repeats: int
    architecture: str  # the ``BackboneConfig`` name
    options: tuple[tuple[str, int], ...] = ()  # BackboneConfig keywords, as pairs: a default no call can mutate
    channels: int = 3
    side: int = SIZE


PLAN = {"resnet18": Plan(8, 5, "resnet18"), "resnet34": Plan(8, 3, "resnet34"), "resnet50": Plan(4, 3, "resnet50"),
        "densenet121": Plan(4, 3, "densenet121"),
        "smallcnn8": Plan(256, 5, "smallcnn", (("smallcnn_width", 8),), channels=1, side=64)}
QUICK_BATCH, QUICK_REPEATS = 2, 2  # --quick: ResNet-18 unless --backbones names others


def run_backbone(name: str, plan: Plan, folder: Path, threads: int) -> dict:
    torch.manual_seed(0)
    batch, repeats, architecture, options, channels, side = plan
    model = ExplainableModel(build_backbone(BackboneConfig(architecture, channels, 2, **dict(options)))).eval()
    started = time.perf_counter()
    onnx_file = export(model, folder / f"{name}.onnx", "onnx", (channels, side, side))
    export(model, folder / f"{name}.ts", "torchscript", (channels, side, side))
    export_s = time.perf_counter() - started
    onnx_runtime = load(onnx_file.path, threads=threads)
    ts_runtime = load(folder / f"{name}.ts")
    x = torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(1))
    x_numpy = x.numpy()
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)

    def eager():
        with torch.inference_mode():
            return model(x)

    def eager_channels_last():
        with torch.inference_mode():
            return channels_last(x_last)

    providers = {"torch-eager": eager, "torch-eager-channels-last": eager_channels_last,
                 "onnxruntime-cpu": lambda: onnx_runtime.run(x_numpy), "torchscript": lambda: ts_runtime.run(x)}
    expected = eager()
    for provider, fn in providers.items():
        for got, want in zip(fn(), expected, strict=True):
            if not torch.allclose(got, want, rtol=0, atol=1e-3):
                raise AssertionError(f"{name}/{provider}: outputs differ from eager torch by {float((got - want).abs().max())}")
    times = {provider: time_calls(fn, repeats) for provider, fn in providers.items()}
    median = {provider: statistics.median(values) for provider, values in times.items()}
    return {
        "backbone": name,
        "input": [channels, side, side],
        "batch": batch,
        "repeats": repeats,
        "onnx_exporter": onnx_file.exporter,
        "export_s": export_s,
        "median_s": median,
        "images_per_s": {provider: batch / value for provider, value in median.items()},
        "ratio_vs_torch_eager": {provider: median["torch-eager"] / value for provider, value in median.items()},
        "all_times_s": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18 only, batch 2, 2 repeats")
    parser.add_argument("--backbones", nargs="*", default=None, help="subset of " + ", ".join(PLAN))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every provider (default 1)")
    args = parser.parse_args(argv)
    names = args.backbones or (["resnet18"] if args.quick else list(PLAN))
    if args.backbones:
        unknown = sorted(set(args.backbones) - set(PLAN))
        if unknown:
            parser.error(f"unknown backbones {unknown}; choose from {list(PLAN)}")
    plan = {name: PLAN[name]._replace(batch=QUICK_BATCH, repeats=QUICK_REPEATS) if args.quick else PLAN[name]
            for name in names}
    threads = args.threads
    if threads < 1:
        parser.error(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    load_average = os.getloadavg()
    console = Console(width=120)
    console.print(
        f"[bold]forward pass[/bold] (3 × {SIZE}², smallcnn8 1 × 64²), 2 classes, {threads} CPU thread(s) "
        f"(torch and ONNX Runtime intra-op) of {os.cpu_count()} cores, load average {load_average[0]:.2f}; batches and repeats per backbone: "
        + ", ".join(f"{name} B={p.batch}×{p.repeats}" for name, p in plan.items())
        + (" (smaller for the big backbones, to keep the run short)" if not args.quick else " (quick)")
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        cases = [run_backbone(name, p, Path(folder), threads) for name, p in plan.items()]
    table = Table(title=f"Forward pass (logits + features + CAM weights), images/s, median; {cpu_name()}, {threads} thread(s)")
    for column in ("backbone", "input", "batch×repeats", "torch eager", "channels-last", "ONNX Runtime CPU", "TorchScript",
                   "CL / eager", "ORT / eager", "TS / eager"):
        table.add_column(column, justify="left" if column == "backbone" else "right")
    for case in cases:
        ips, ratio = case["images_per_s"], case["ratio_vs_torch_eager"]
        table.add_row(
            case["backbone"], "×".join(map(str, case["input"])), f"{case['batch']}×{case['repeats']}",
            f"{ips['torch-eager']:.1f}", f"{ips['torch-eager-channels-last']:.1f}", f"{ips['onnxruntime-cpu']:.1f}",
            f"{ips['torchscript']:.1f}", f"{ratio['torch-eager-channels-last']:.2f}×", f"{ratio['onnxruntime-cpu']:.2f}×",
            f"{ratio['torchscript']:.2f}×",
        )
    console.print(table)
    total = time.perf_counter() - started
    console.print(f"total {total:.0f} s (exports included: " + ", ".join(f"{c['backbone']} {c['export_s']:.0f} s" for c in cases) + ")")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("forward-cpu-quick.json" if args.quick else "forward-cpu.json")
    record = {
        "benchmark": "forward",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"processor": cpu_name(), "cpu_count": os.cpu_count(), "threads": threads, "load_average_at_start": load_average,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "onnxruntime": __import__("onnxruntime").__version__},
        "input": {"size": [SIZE, SIZE], "channels": 3, "classes": 2, "other_inputs": {k: [p.channels, p.side, p.side] for k, p in PLAN.items()
                                                                                 if (p.channels, p.side) != (3, SIZE)}},
        "quick": args.quick,
        "total_s": total,
        "cases": cases,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
