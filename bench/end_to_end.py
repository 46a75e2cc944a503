"""End to end: images → ONNX Runtime forward → ``score_batch`` → per-image Dice, against the forward pass alone.

The question (issue 29): how close does scoring a pool come to the model's forward pass on the same
images? Variants, measured in one run on the same images, ROIs, weights and exported file, rounds
interleaved (each round runs every variant once, in a rotated order), medians over rounds (the
best round is recorded too: on a shared host it is the least disturbed), and each variant's ratio
to the forward pass within each round, medians over rounds (``paired_ratios``: what a disturbed
round does to every variant cancels):

* ``forward`` — the strictest floor: ONNX Runtime alone on each batch of the same images, already
  normalised, at the default split's runtime threads (``ThreadSplit().runtime()``);
* ``forward+normalise`` — the model's forward pass from the pool's images: the model's
  normalisation, then ONNX Runtime (what every way of scoring a pool does first);
* ``serial`` — xal before issue 29: per batch ``score_chunk`` (forward, then ``score_batch``), ONNX
  Runtime on every core and the kernel on torch's threads;
* ``serial-one-thread`` — the same with the side work (normalise, ``score_batch``) on the calling
  thread with torch on one thread and ONNX Runtime at the default split's threads: no overlap, and
  nothing of the side work competing with ONNX Runtime's threads while they run;
* ``pipelined`` — ``score_chunks``, what a service job and the loop's ``InProcessScorer`` run: the
  next batch normalised and the previous one scored on one worker thread while ONNX Runtime
  computes this one, with the default ``ThreadSplit``;
* ``forward-other-split`` / ``pipelined-other-split`` — the same two with the other split: a core
  of its own for the scoring side (ONNX Runtime on every core but one) where the default shares
  the cores (hosts of fewer than 8 cores), every core where the default gives one away;
* ``forward-nospin`` / ``pipelined-nospin`` — the default split with ONNX Runtime's intra-op
  threads blocking instead of spinning while they wait (``OnnxRuntime(spin=False)``): the gaps
  between and inside its parallel loops are left to the scoring side's thread;
* ``captum`` — the usual way without xal: torch eager forward for the predicted class, Captum's
  ``LayerGradCam`` on the same target layer (forward + backward), ``LayerAttribution.interpolate``
  to the ROI frame, min-max, threshold and torch Dice (every core to torch).

Every xal variant decodes each batch's bit-packed ROIs as the batch is read (what the pool reader
does) and the two pipelines' scores are checked equal to the serial path's, item by item, before
anything is reported. A profile of the serial path (wall and process CPU time per stage, torch on
all cores and on one) says where its time beyond the forward pass goes.

Model and inputs: a MONAI ResNet-18 (3 channels, 2 classes, random weights) exported to ONNX at
224², as ``bench/forward.py``; batches of 32 uniform images and blob ROIs. On this 2-core host the
full run takes ~5 minutes; ``--quick`` (2 batches of 8, 1 round) ~1 minute. ``--device cuda`` runs
ONNX Runtime's CUDA provider and the Triton kernel (``bench/gpu_checks.sh``); there ``serial`` and
``pipelined`` differ by the overlap only. JSON: ``bench/results/end_to_end-<device>.json``
(``-quick`` added in quick mode), with the card's or CPU's name and the load average at the start
and end (the numbers of a shared host are only comparable at a similar load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import cpu_name, paired_median_ratio  # noqa: E402 - bench/timing.py (scripts run with bench/ on sys.path)

from xal_core.acquisition import ScoringConfig, score_batch  # noqa: E402
from xal_core.acquisition.pool_scoring import concat_scores, score_chunk, score_chunks  # noqa: E402
from xal_core.models import ExplainableModel, build_backbone, export  # noqa: E402
from xal_core.models.runtime import ThreadSplit, load, usable_cores  # noqa: E402
from xal_core.scoring import Roi  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SIZE = 224
CONFIG = ScoringConfig()


class Chunk(NamedTuple):
    """A batch as ``score_chunk`` reads a pool chunk (``ChunkLike``)."""

    index: torch.Tensor
    images: torch.Tensor
    roi: Roi


def make_inputs(batches: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(images float32 [b, 3, 224, 224] in [0, 1], ROIs bit-packed uint8 [b, 224, 28])`` per batch:
    blob ROIs (random 28×28 cells, upsampled), about 30 % of the frame."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        images = torch.rand(batch, 3, SIZE, SIZE, generator=generator)
        cells = torch.rand(batch, SIZE // 8, SIZE // 8, generator=generator) < 0.3
        masks = cells.repeat_interleave(8, 1).repeat_interleave(8, 2)
        out.append((images, torch.from_numpy(np.packbits(masks.numpy(), axis=-1))))
    return out


def chunks(inputs) -> Iterator[Chunk]:
    """The batches as a pool reader gives them: ROIs decoded as each is read."""
    start = 0
    for images, packed in inputs:
        yield Chunk(torch.arange(start, start + len(images)), images, Roi.from_packed_masks(packed, SIZE))
        start += len(images)


def captum_pipeline(backbone: torch.nn.Module, layer_name: str, normalise, inputs, threshold: float,
                    device: torch.device) -> Callable[[], list[torch.Tensor]]:
    from captum.attr import LayerAttribution, LayerGradCam

    layer = dict(backbone.named_modules())[layer_name]
    gradcam = LayerGradCam(backbone, layer)

    def run() -> list[torch.Tensor]:
        dice = []
        for images, packed in inputs:
            masks = torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=SIZE).view(np.bool_)).to(device)
            x = normalise(images.to(device))
            with torch.no_grad():
                target = backbone(x).argmax(dim=1)
            cam = gradcam.attribute(x, target=target, relu_attributions=True)
            maps = LayerAttribution.interpolate(cam, (SIZE, SIZE), interpolate_mode="bilinear")[:, 0].detach()
            low = maps.amin(dim=(1, 2), keepdim=True)
            span = maps.amax(dim=(1, 2), keepdim=True) - low
            maps = torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), 0.0)
            attended = maps >= threshold
            overlap = (attended & masks).sum(dim=(1, 2))
            pair = attended.sum(dim=(1, 2)) + masks.sum(dim=(1, 2))
            dice.append(torch.where(pair == 0, 1.0, 2.0 * overlap / pair.clamp_min(1)).cpu())
        return dice

    return run


def profile_serial(runtime, inputs, kernel_threads: int | None) -> dict:
    """Per batch: wall and process CPU milliseconds of each step of the serial path, medians over
    the batches (the first batch warms up and is left out when there are more)."""
    rows: dict[str, list[tuple[float, float]]] = {}

    def step(name, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn()
        rows.setdefault(name, []).append(((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3))
        return value

    for number, (images, packed) in enumerate(inputs):
        roi = step("roi decode", lambda packed=packed: Roi.from_packed_masks(packed, SIZE))
        x = step("normalise", lambda images=images: runtime.metadata.normalise(images))
        outputs = step("forward", lambda x=x: runtime.run(x))
        step("score_batch", lambda outputs=outputs, roi=roi, n=len(images), number=number: score_batch(
            torch.arange(n), *outputs, roi, CONFIG, kernel_threads=kernel_threads))
    skip = 1 if len(inputs) > 1 else 0
    return {name: {"wall_ms": round(statistics.median(w for w, _ in values[skip:]), 2),
                   "cpu_ms": round(statistics.median(c for _, c in values[skip:]), 2)} for name, values in rows.items()}


def same_scores(a, b) -> bool:
    return all(torch.equal(getattr(a, name), getattr(b, name)) or
               (getattr(a, name).is_floating_point() and torch.allclose(getattr(a, name), getattr(b, name), rtol=0, atol=0,
                                                                         equal_nan=True))
               for name in a.__dataclass_fields__)


def paired_ratios(times: dict[str, list[float]], baseline: str = "forward") -> dict[str, float]:
    """Each variant's throughput over the baseline's *within* each round, then the median over
    rounds: a disturbed round slows every variant run in it, and the pairing cancels what the
    ratio of two medians keeps (the variants run back to back in a round)."""
    return {f"{name}_vs_{baseline}": paired_median_ratio(times[baseline], values)
            for name, values in times.items() if name != baseline}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 batches of 8 images, 1 round")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--batches", type=int, default=4, help="batches per pass (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians over them (default 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-captum", action="store_true", help="leave the Captum baseline out")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.batches, args.rounds = 8, 2, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    cores = usable_cores()
    split = ThreadSplit()
    runtime_threads = split.runtime()
    load_start = os.getloadavg()
    started = time.perf_counter()
    torch.manual_seed(0)
    explainable = ExplainableModel(build_backbone("resnet18", in_channels=3, num_classes=2)).eval()
    inputs = make_inputs(args.batches, args.batch, seed=1)
    n_images = args.batches * args.batch
    with tempfile.TemporaryDirectory() as folder:
        path = export(explainable, Path(folder) / "resnet18.onnx", "onnx", (3, SIZE, SIZE)).path
        if device.type == "cuda":
            cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            split_rt = all_rt = load(path, providers=cuda, max_batch=args.batch)
            if split_rt.device != "cuda":
                raise SystemExit("ONNX Runtime's CUDA provider did not load (is onnxruntime-gpu installed?)")
            other_threads, other_rt, nospin_rt = None, None, None
        else:
            split_rt = load(path, threads=runtime_threads, max_batch=args.batch)
            all_rt = split_rt if runtime_threads == cores else load(path, threads=cores, max_batch=args.batch)
            other_threads = cores - split.kernel_threads if runtime_threads == cores else cores
            other_rt = load(path, threads=other_threads, max_batch=args.batch) if 1 <= other_threads != runtime_threads \
                else None
            nospin_rt = load(path, threads=runtime_threads, max_batch=args.batch, spin=False)
    torch_threads = torch.get_num_threads()
    kernel_threads = split.kernel_threads
    normalised = [split_rt.metadata.normalise(images) for images, _ in inputs]

    def forward(runtime, normalise: bool = False):
        def run():
            if normalise:
                for images, _ in inputs:
                    runtime.run(runtime.metadata.normalise(images))
            else:
                for images in normalised:
                    runtime.run(images)
        return run

    results: dict[str, list] = {}

    def serial():
        results["serial"] = [score_chunk(all_rt, chunk, CONFIG) for chunk in chunks(inputs)]

    def serial_one_thread():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results["serial-one-thread"] = [score_chunk(split_rt, chunk, CONFIG) for chunk in chunks(inputs)]
        finally:
            torch.set_num_threads(before)

    def pipelined(runtime, name):
        def run():
            results[name] = [scores for _, scores in score_chunks(runtime, chunks(inputs), CONFIG,
                                                                  kernel_threads=kernel_threads)]
        return run

    variants: dict[str, Callable[[], object]] = {
        "forward": forward(split_rt), "forward+normalise": forward(split_rt, normalise=True), "serial": serial,
        "pipelined": pipelined(split_rt, "pipelined"),
    }
    if device.type == "cpu":
        variants["serial-one-thread"] = serial_one_thread
    if other_rt is not None:
        variants["forward-other-split"] = forward(other_rt)
        variants["pipelined-other-split"] = pipelined(other_rt, "pipelined-other-split")
    if nospin_rt is not None:
        variants["forward-nospin"] = forward(nospin_rt)
        variants["pipelined-nospin"] = pipelined(nospin_rt, "pipelined-nospin")
    skipped = {}
    if not args.no_captum:
        try:
            backbone = explainable.backbone.to(device)
            variants["captum"] = captum_pipeline(backbone, explainable.target_layer, split_rt.metadata.normalise, inputs,
                                                 CONFIG.threshold, device)
        except ImportError:
            skipped["captum"] = "Captum is not installed (pip install -e '.[dev]')"
    names = list(variants)
    print(f"end to end at {SIZE}², ResNet-18 (ONNX Runtime {split_rt.device}), {args.batches} batches of {args.batch}, "
          f"{args.rounds} round(s); {cores} usable cores, split: runtime {runtime_threads} thread(s) + kernel "
          f"{kernel_threads} (other split: runtime {other_threads}); torch threads {torch_threads}; load average "
          f"{load_start[0]:.2f}", flush=True)
    for fn in variants.values():  # warm-up: sessions, kernel compilation, allocator
        fn()
    reference = concat_scores(results["serial"])
    for name in ("pipelined", "pipelined-other-split", "pipelined-nospin", "serial-one-thread"):
        if name in results and not same_scores(concat_scores(results[name]), reference):
            raise AssertionError(f"{name}: scores differ from the serial path's")
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            variants[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - began)
        print(f"round {round_ + 1}: " + ", ".join(f"{name} {n_images / times[name][-1]:.1f}" for name in names)
              + " images/s", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    ips = {name: n_images / value for name, value in median.items()}
    best_ips = {name: n_images / min(values) for name, values in times.items()}

    def ratios_of(ips: dict[str, float]) -> dict[str, float]:
        out = {
            "pipelined_vs_forward": ips["pipelined"] / ips["forward"],
            "pipelined_vs_forward_with_normalise": ips["pipelined"] / ips["forward+normalise"],
            "serial_vs_forward": ips["serial"] / ips["forward"],
            "serial_vs_forward_with_normalise": ips["serial"] / ips["forward+normalise"],
            "pipelined_vs_serial": ips["pipelined"] / ips["serial"],
        }
        if "serial-one-thread" in ips:
            out["serial_one_thread_vs_forward"] = ips["serial-one-thread"] / ips["forward"]
            out["pipelined_vs_serial_one_thread"] = ips["pipelined"] / ips["serial-one-thread"]
        if "pipelined-other-split" in ips:
            out["other_split_pipelined_vs_its_forward"] = ips["pipelined-other-split"] / ips["forward-other-split"]
            out["other_split_pipelined_vs_pipelined"] = ips["pipelined-other-split"] / ips["pipelined"]
        if "pipelined-nospin" in ips:
            out["nospin_pipelined_vs_forward"] = ips["pipelined-nospin"] / ips["forward"]
            out["nospin_pipelined_vs_its_forward"] = ips["pipelined-nospin"] / ips["forward-nospin"]
            out["nospin_forward_vs_forward"] = ips["forward-nospin"] / ips["forward"]
        if "captum" in ips:
            out["pipelined_vs_captum"] = ips["pipelined"] / ips["captum"]
        return out

    ratios, best_ratios = ratios_of(ips), ratios_of(best_ips)
    paired = paired_ratios(times)
    profile = {}
    if device.type == "cpu":
        profile["serial, torch on every core, kernel on torch's threads"] = profile_serial(all_rt, inputs, None)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        profile["serial, torch on 1 thread, kernel on 1 thread"] = profile_serial(all_rt, inputs, 1)
        torch.set_num_threads(before)
    load_end = os.getloadavg()
    total = time.perf_counter() - started
    for name in names:
        print(f"  {name:20s} {ips[name]:8.2f} images/s (median {median[name]:.2f} s; best round {best_ips[name]:.2f})")
    for name, value in ratios.items():
        print(f"  {name:42s} {value:.3f} (best rounds: {best_ratios[name]:.3f})")
    print("  paired per round, medians: " + ", ".join(f"{name} {value:.3f}" for name, value in paired.items()))
    for name, steps in profile.items():
        print(f"  profile, {name}: " + ", ".join(f"{step} {v['wall_ms']:.1f} ms ({v['cpu_ms']:.1f} ms CPU)"
                                                  for step, v in steps.items()))
    print(f"total {total:.0f} s; load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end")
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_name()
    out = args.out or RESULTS / f"end_to_end-{args.device}{'-quick' if args.quick else ''}.json"
    record = {
        "benchmark": "bench/end_to_end.py",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": {"kind": args.device, "name": card, "usable_cores": cores},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": __import__("onnxruntime").__version__, "torch_threads": torch_threads,
                    "load_average_start": [round(v, 2) for v in load_start],
                    "load_average_end": [round(v, 2) for v in load_end]},
        "model": "MONAI ResNet-18, 3 channels, 2 classes, ONNX (xal_core.models.export) at 224²",
        "quick": args.quick, "batch": args.batch, "batches": args.batches, "rounds": args.rounds,
        "thread_split": {"runtime_threads": runtime_threads, "kernel_threads": kernel_threads,
                         "serial_runtime_threads": cores, "other_split_runtime_threads": other_threads},
        "images_per_s": ips, "median_s": median, "all_times_s": times, "ratios": ratios,
        "best_round_images_per_s": best_ips, "best_round_ratios": best_ratios,
        "paired_ratios": paired,
        "pipelined_scores_equal_serial": True, "profile": profile, "skipped": skipped, "total_s": total,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
