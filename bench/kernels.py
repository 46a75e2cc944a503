"""Throughput of the CAM/ROI alignment step: xal's fused Triton kernel against torch and the peers.

Providers, each measured in the same run on the same inputs (fp16 features on a GPU, fp32 on a CPU):

* ``xal-triton`` (GPU) — ``xal_kernels`` fused kernel, ROI as bit-packed masks (the wire format);
* ``xal-numba`` (CPU host) — ``xal_kernels.cpu_alignment``, the compiled CPU kernel that CPU tensors
  are routed to;
* ``xal-separable`` (CPU host) — ``xal_core.scoring.cam_alignment``, the separable torch path;
* ``torch-eager`` — the dense float32 pipeline, ``cam_alignment_dense(..., dtype=float32, chunk_size=B)``:
  einsum → ReLU → ``interpolate`` → min-max → threshold → sums, every map at full resolution;
* ``torch-compile`` — ``torch.compile`` of that same eager pipeline;
* ``monai-gradcam`` — MONAI ``GradCAM``'s own post-processing of the same maps (``(α·A).sum`` → ReLU →
  ``default_upsampler`` → ``default_normalizer``) then a torch Dice, if MONAI is installed;
* ``captum-interpolate`` — Captum ``LayerAttribution.interpolate`` (bilinear) + min-max + torch Dice,
  if Captum is installed.

The peers compute hard Dice only; xal and the torch pipelines compute all four metrics. Reported per
provider: images/s (median of the repeats), effective GB/s = (features + weights + bit-packed ROI
bytes, each read once) / time, the fraction of the device's copy bandwidth measured in the same run
with a large ``tensor.copy_`` (bytes read + written / time), and the ratio against every other
provider. On a host without a CUDA GPU the CPU providers run at reduced sizes and the GPU rows are
not produced. Writes ``bench/results/kernels-<device>.json``.

Run: ``python bench/kernels.py`` (``--quick`` for a smoke run, ``--providers a,b`` to pick).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import re
import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import cpu_name, time_calls  # bench/timing.py (scripts run with bench/ on sys.path)

from xal_core.scoring import Roi, cam_alignment
from xal_core.scoring.parameters import DEFAULT_THRESHOLD
from xal_core.scoring.reference import cam_alignment_dense

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLD = DEFAULT_THRESHOLD  # τ as the library defaults it
# (B, C, h=w, H=W): the two shapes on a GPU; reduced batches on a CPU (about 2 minutes).
GPU_CASES = [(1024, 512, 7, 224), (256, 1024, 16, 512)]
CPU_CASES = [(128, 512, 7, 224), (16, 1024, 16, 512)]
QUICK_CASES = [(8, 32, 7, 56), (2, 64, 16, 128)]


def make_inputs(batch: int, channels: int, grid: int, frame: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = (torch.rand(batch, channels, grid, grid, generator=gen) + 0.05).to(device=device, dtype=dtype)
    weights = (torch.randn(batch, channels, generator=gen) / channels).to(device=device, dtype=dtype)
    coarse = torch.rand(batch, 1, max(1, frame // 16), max(1, frame // 16), generator=gen)
    masks = F.interpolate(coarse, size=(frame, frame), mode="bilinear", align_corners=False)[:, 0] > 0.6
    roi = Roi.from_masks(masks.to(device))
    return features, weights, roi, roi.packed_masks()


def torch_dice(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    predicted = maps >= threshold
    overlap = (predicted & masks).sum(dim=(1, 2))
    pair = predicted.sum(dim=(1, 2)) + masks.sum(dim=(1, 2))
    return torch.where(pair == 0, 1.0, 2.0 * overlap / pair.clamp_min(1))


def peer_providers(features, weights, roi) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """MONAI's and Captum's way of doing the same step, where installed."""
    providers, skipped = {}, {}
    masks = roi.masks
    size = roi.size
    try:
        from monai.visualize.class_activation_maps import default_normalizer
        from monai.visualize.visualizer import default_upsampler
    except ImportError:
        skipped["monai-gradcam"] = "MONAI is not installed"
    else:

        def monai_step():
            # GradCAM.compute_map's arithmetic on given weights, then GradCAM's post-processing.
            acti_map = F.relu((weights[:, :, None, None] * features).sum(1, keepdim=True))
            cam = default_normalizer(default_upsampler(size)(acti_map.float()))  # min → 1, max → 0
            return torch_dice(1.0 - cam[:, 0], masks, THRESHOLD)

        providers["monai-gradcam"] = monai_step
    try:
        from captum.attr import LayerAttribution
    except ImportError:
        skipped["captum-interpolate"] = "Captum is not installed"
    else:

        def captum_step():
            grid = F.relu(torch.einsum("bc,bchw->bhw", weights.float(), features.float()))[:, None]
            maps = LayerAttribution.interpolate(grid, size, interpolate_mode="bilinear")[:, 0]
            low = maps.amin(dim=(1, 2), keepdim=True)
            span = maps.amax(dim=(1, 2), keepdim=True) - low
            maps = torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), 0.0)
            return torch_dice(maps, masks, THRESHOLD)

        providers["captum-interpolate"] = captum_step
    return providers, skipped


def copy_bandwidth(device: torch.device, n_bytes: int, repeats: int = 5) -> float:
    """(bytes read + bytes written) / s of ``dst.copy_(src)`` on ``device``."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    best = min(time_calls(lambda: dst.copy_(src), repeats, device))
    return 2 * n_bytes / best


def run_case(case, device, dtype, repeats, wanted, copy_bw) -> dict:
    batch, channels, grid, frame = case
    features, weights, roi, packed = make_inputs(batch, channels, grid, frame, dtype, device)
    providers: dict[str, Callable[[], object]] = {}
    skipped: dict[str, str] = {}
    if device.type == "cuda":
        op = importlib.import_module("xal_kernels.triton_alignment")
        providers["xal-triton"] = lambda: op.launch_cam_alignment(features, weights, roi.size, roi.known, packed=packed, threshold=THRESHOLD)
    else:
        cpu_alignment = importlib.import_module("xal_kernels.cpu_alignment")  # Numba: CPU hosts only
        providers["xal-numba"] = lambda: cpu_alignment.cam_alignment(features, weights, roi, threshold=THRESHOLD)
        providers["xal-separable"] = lambda: cam_alignment(features, weights, roi, threshold=THRESHOLD)
        skipped["xal-triton"] = "needs a CUDA GPU: not run on this host (no GPU numbers, no estimates)"
    eager = functools.partial(cam_alignment_dense, threshold=THRESHOLD, dtype=torch.float32, chunk_size=batch)
    providers["torch-eager"] = lambda: eager(features, weights, roi)
    compiled = torch.compile(eager)
    providers["torch-compile"] = lambda: compiled(features, weights, roi)
    peers, peer_skips = peer_providers(features, weights, roi)
    providers.update(peers)
    skipped.update(peer_skips)
    if wanted:
        skipped.update({n: "not selected (--providers)" for n in providers if n not in wanted})
        providers = {n: fn for n, fn in providers.items() if n in wanted}

    n_bytes = features.numel() * features.element_size() + weights.numel() * weights.element_size() + packed.numel()
    # One provider after the other, torch-compile and the peers last: the compiled CPU kernels link
    # their own OpenMP runtime, whose spinning workers slow down whatever runs right after them.
    times: dict[str, list[float]] = {}
    for name, fn in list(providers.items()):
        try:
            times[name] = time_calls(fn, repeats, device)
        except Exception as error:  # a provider that cannot run here is reported, never faked
            skipped[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            del providers[name]
    results = {}
    for name in providers:
        median = statistics.median(times[name])
        results[name] = {
            "median_s": median,
            "images_per_s": batch / median,
            "effective_GBps": n_bytes / median / 1e9,
            "fraction_of_copy_bandwidth": (n_bytes / median) / copy_bw,
            "times_s": times[name],
        }
    ratios = {a: {b: results[a]["images_per_s"] / results[b]["images_per_s"] for b in results if b != a} for a in results}
    return {
        "case": {"B": batch, "C": channels, "h": grid, "w": grid, "H": frame, "W": frame, "dtype": str(dtype).replace("torch.", ""), "roi": "packed masks"},
        "bytes_read_once": n_bytes,
        "providers": results,
        "ratios": ratios,
        "skipped": skipped,
        "agreement_vs_float64_reference": agreement(features, weights, roi, packed, device),
    }


def agreement(features, weights, roi, packed, device) -> dict:
    """Max differences of xal's result against the float64 dense reference on the first items."""
    part = slice(0, min(8, features.shape[0]))
    exact = cam_alignment_dense(features[part], weights[part], roi[part], threshold=THRESHOLD, dtype=torch.float64)
    if device.type == "cuda":
        op = importlib.import_module("xal_kernels.triton_alignment")
        ours = op.launch_cam_alignment(features[part], weights[part], roi.size, roi.known[part], packed=packed[part], threshold=THRESHOLD)
    else:  # the path CPU tensors are routed to
        cpu_alignment = importlib.import_module("xal_kernels.cpu_alignment")
        ours = cpu_alignment.cam_alignment(features[part], weights[part], roi[part], threshold=THRESHOLD)
    diff = lambda name: float((getattr(ours, name).double() - getattr(exact, name).double()).abs().max())  # noqa: E731
    return {f"{name}_max_abs_diff": diff(name) for name in ("dice", "soft_dice", "roi_energy", "pointing_hit")}


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per provider (default 10 GPU, 5 CPU)")
    parser.add_argument("--providers", default="", help="comma-separated subset of providers to run")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/kernels-<device>.json)")
    args = parser.parse_args()

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    on_gpu = device.type == "cuda"
    dtype = torch.float16 if on_gpu else torch.float32
    cases = QUICK_CASES if args.quick else (GPU_CASES if on_gpu else CPU_CASES)
    repeats = args.repeats or (2 if args.quick else (10 if on_gpu else 5))
    wanted = {p.strip() for p in args.providers.split(",") if p.strip()}
    label = device_label(device)
    print(f"device: {label}; torch {torch.__version__}; features {str(dtype).replace('torch.', '')}; median of {repeats}")
    if not on_gpu:
        print("no CUDA GPU on this host: the GPU rows (xal-triton, and every provider at the issue's full sizes) need a GPU;")
        print("running the CPU providers at reduced batch sizes. No GPU numbers and no estimates are produced.")
    load_before = os.getloadavg()
    copy_bw = copy_bandwidth(device, (1 << 30) if on_gpu and not args.quick else (1 << 26 if args.quick else 1 << 28))
    print(f"measured copy bandwidth ({'device-to-device' if on_gpu else 'host memory'}): {copy_bw / 1e9:.1f} GB/s (read + write)")

    records = []
    for case in cases:
        record = run_case(case, device, dtype, repeats, wanted, copy_bw)
        records.append(record)
        c = record["case"]
        print(f"\nB={c['B']} C={c['C']} h=w={c['h']} H=W={c['H']} ({record['bytes_read_once'] / 1e6:.1f} MB read once)")
        names = list(record["providers"])
        header = f"{'provider':<20} {'median ms':>10} {'images/s':>11} {'eff. GB/s':>10} {'of copy BW':>10}  " + " ".join(f"{'vs ' + n:>18}" for n in names)
        print(header)
        print("-" * len(header))
        for name, r in record["providers"].items():
            ratio_cells = " ".join(f"{(record['ratios'][name][o] if o != name else 1.0):>17.2f}×" for o in names)
            print(f"{name:<20} {r['median_s'] * 1e3:>10.2f} {r['images_per_s']:>11.1f} {r['effective_GBps']:>10.2f} {r['fraction_of_copy_bandwidth']:>9.1%}  {ratio_cells}")
        for name, reason in record["skipped"].items():
            print(f"{name:<20} skipped: {reason}")
        a = record["agreement_vs_float64_reference"]
        print("xal vs float64 reference (first items): " + ", ".join(f"{k.replace('_max_abs_diff', '')} {v:.1e}" for k, v in a.items()))

    out = args.out or RESULTS / f"kernels-{re.sub(r'[^a-z0-9]+', '-', label.split(' (')[0].lower()).strip('-')}.json"
    result = {
        "benchmark": "kernels",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": label,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
        "quick": args.quick,
        "copy_bandwidth_GBps": copy_bw / 1e9,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "notes": [
            "effective GB/s counts features + weights + bit-packed ROI, each read once",
            "copy bandwidth counts bytes read + written by a large tensor.copy_",
            "peers (MONAI, Captum) compute hard Dice only",
        ],
        "cases": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nhost load average (1 min) before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
