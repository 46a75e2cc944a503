"""Fused Triton kernels: logits → softmax → uncertainty → (optionally) the weighted dual score.

Exactly ``xal_core.scoring.uncertainty`` and ``xal_core.scoring.dual_score`` (docs/contract.md), with
the probabilities never written to memory. A program takes ``BLOCK_B`` rows and walks the classes in
``BLOCK_K`` chunks twice (the second read hits the cache): pass 1 finds the row maximum ``m``, the
second largest logit and whether any logit is NaN/Inf; pass 2 sums ``S = Σ e^{z-m}`` and
``T = Σ e^{z-m}(z-m)``. Then, in fp32,

* entropy ``= (log S − T/S) / log K`` (``−Σ p log p`` with ``log p = z − m − log S``);
* margin ``= 1 − (1 − e^{z₂−m}) / S`` (``p₁ = 1/S``, ``p₂ = e^{z₂−m}/S``);
* least confidence ``= (1 − 1/S)·K/(K−1)``;

each clamped to ``[0, 1]``, NaN for a row with a non-finite logit. The dual score follows
``xal_core.scoring.fusion`` in fp64: invalid → ``-inf``, unknown ROI → ``U`` alone
(``missing_roi="uncertainty_only"``) or NaN (``"exclude"``), else ``λ·U + (1 − λ)·M``.
Rank fusion needs the whole pool, so it stays in torch (``xal_core.scoring.dual_score``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from xal_core.scoring.fusion import DualScore, check_score_pair
from xal_core.scoring.inputs import warn_nonfinite
from xal_core.scoring.parameters import (
    DEFAULT_FUSION,
    DEFAULT_MISSING_ROI,
    DEFAULT_UNCERTAINTY,
    DEFAULT_WEIGHT,
    FUSION_METHODS,
    check_choice,
    check_missing_roi,
    check_uncertainty,
    check_weight,
)
from xal_core.scoring.results import AlignmentScores
from xal_core.scoring.uncertainty import check_logits

__all__ = ["uncertainty", "dual_score", "uncertainty_and_dual_score"]

_KIND_CODE = {"entropy": 0, "margin": 1, "least_confidence": 2}
_BLOCK_ELEMENTS = 2048


# --------------------------------------------------------------------------- jit helpers
@triton.jit
def _row_uncertainty(logits_ptr, rows, live, K, stride, log_k, KIND: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """Uncertainty (fp32 ``[BLOCK_B]``, NaN for non-finite rows) of rows ``rows`` of ``logits``."""
    row_base = logits_ptr + rows.to(tl.int64)[:, None] * stride
    top1 = tl.full([BLOCK_B], -float("inf"), dtype=tl.float32)
    top2 = tl.full([BLOCK_B], -float("inf"), dtype=tl.float32)
    probe = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        valid = live[:, None] & (ks < K)[None, :]
        z = tl.load(row_base + ks[None, :], mask=valid, other=-float("inf")).to(tl.float32)
        probe += tl.sum(tl.where(valid, z * 0.0, 0.0), axis=1)
        chunk1 = tl.max(z, axis=1)
        n_at_top = tl.sum((z == chunk1[:, None]).to(tl.int32), axis=1)
        below = tl.max(tl.where(z == chunk1[:, None], -float("inf"), z), axis=1)
        chunk2 = tl.where(n_at_top > 1, chunk1, below)
        top2 = tl.maximum(tl.minimum(top1, chunk1), tl.maximum(top2, chunk2))
        top1 = tl.maximum(top1, chunk1)
    bad = probe != 0.0
    m = tl.where(bad | ~live, 0.0, top1)  # keep the arithmetic below finite on rows to be discarded
    total = tl.zeros([BLOCK_B], dtype=tl.float32)
    tilted = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        valid = live[:, None] & (ks < K)[None, :] & ~bad[:, None]
        z = tl.load(row_base + ks[None, :], mask=valid, other=0.0).to(tl.float32)
        shifted = tl.where(valid, z - m[:, None], 0.0)
        e = tl.where(valid, tl.exp(shifted), 0.0)
        total += tl.sum(e, axis=1)
        tilted += tl.sum(e * shifted, axis=1)
    total = tl.where(total > 0.0, total, 1.0)
    if KIND == 0:
        value = (tl.log(total) - tilted / total) / log_k
    elif KIND == 1:
        second = tl.exp(tl.where(bad | ~live, 0.0, top2) - m)
        value = 1.0 - (1.0 - second) / total
    else:
        value = (1.0 - 1.0 / total) * (K / (K - 1.0))
    value = tl.minimum(tl.maximum(value, 0.0), 1.0)
    return tl.where(bad, float("nan"), value)


@triton.jit
def _fuse(u, m, flagged, weight, EXCLUDE: tl.constexpr):
    """Dual score (fp64) and flags (bit 0: invalid, bit 1: excluded) from ``U``, ``M`` (fp64)."""
    bad = (u != u) | (u == float("inf")) | (u == -float("inf")) | (m == float("inf")) | (m == -float("inf")) | flagged
    unknown = (m != m) & ~bad
    score = tl.where(unknown, u, weight * u + (1.0 - weight) * m)
    flags = bad.to(tl.int8)
    if EXCLUDE:
        score = tl.where(unknown, float("nan"), score)
        flags += 2 * unknown.to(tl.int8)
    return tl.where(bad, -float("inf"), score), flags


# --------------------------------------------------------------------------- kernels
@triton.jit
def _uncertainty_kernel(
    logits_ptr, u_ptr, misalignment_ptr, flagged_ptr, weight_ptr, score_ptr, flags_ptr,
    B, K, stride, log_k,
    KIND: tl.constexpr, FUSE: tl.constexpr, EXCLUDE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    live = rows < B
    u = _row_uncertainty(logits_ptr, rows, live, K, stride, log_k, KIND, BLOCK_B, BLOCK_K)
    tl.store(u_ptr + rows, u, mask=live)
    if FUSE:
        m = tl.load(misalignment_ptr + rows, mask=live, other=0.0).to(tl.float64)
        flagged = tl.load(flagged_ptr + rows, mask=live, other=0) != 0
        score, flags = _fuse(u.to(tl.float64), m, flagged, tl.load(weight_ptr), EXCLUDE)
        tl.store(score_ptr + rows, score, mask=live)
        tl.store(flags_ptr + rows, flags, mask=live)


@triton.jit
def _dual_score_kernel(
    u_ptr, misalignment_ptr, flagged_ptr, weight_ptr, score_ptr, flags_ptr, B,
    EXCLUDE: tl.constexpr, BLOCK: tl.constexpr,
):
    items = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = items < B
    u = tl.load(u_ptr + items, mask=live, other=0.0).to(tl.float64)
    m = tl.load(misalignment_ptr + items, mask=live, other=0.0).to(tl.float64)
    flagged = tl.load(flagged_ptr + items, mask=live, other=0) != 0
    score, flags = _fuse(u, m, flagged, tl.load(weight_ptr), EXCLUDE)
    tl.store(score_ptr + items, score, mask=live)
    tl.store(flags_ptr + items, flags, mask=live)


# --------------------------------------------------------------------------- host side
def _buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the kernels write; tests fill them with poison."""
    return torch.empty(shape, dtype=dtype, device=device)


def _blocks(batch: int, classes: int) -> tuple[int, int]:
    block_k = min(triton.next_power_of_2(classes), 1024)
    block_b = max(1, min(triton.next_power_of_2(max(batch, 1)), _BLOCK_ELEMENTS // block_k))
    return block_b, block_k


def _check_fusion(weight: float, method: str, missing_roi: str) -> None:
    """The argument checks of ``xal_core.scoring.dual_score`` (the same functions, same messages)."""
    check_weight(weight)
    check_choice(method, FUSION_METHODS, "method")
    check_missing_roi(missing_roi)


def _flagged(
    shape: torch.Size, device: torch.device, invalid: torch.Tensor | None, alignment_invalid: torch.Tensor | None
) -> torch.Tensor:
    """int8 ``[B]``: items flagged invalid by the caller or by the alignment scores."""
    flagged = torch.zeros(shape, dtype=torch.bool, device=device)
    for flags, name in ((invalid, "invalid"), (alignment_invalid, "misalignment.invalid")):
        if flags is not None:
            if flags.shape != shape:
                raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(flags.shape)}")
            flagged = flagged | flags.to(device=device, dtype=torch.bool)
    return flagged.to(torch.int8)


def _split_misalignment(misalignment: torch.Tensor | AlignmentScores) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(misalignment, AlignmentScores):
        return misalignment.misalignment, misalignment.invalid
    return misalignment, None


def _result(score: torch.Tensor, flags: torch.Tensor) -> DualScore:
    bad = (flags & 1) != 0
    warn_nonfinite(int(bad.sum()), "uncertainty or CAM inputs")
    return DualScore(score=score, invalid=bad, excluded=(flags & 2) != 0)


def uncertainty(logits: torch.Tensor, kind: str = DEFAULT_UNCERTAINTY) -> torch.Tensor:
    """``xal_core.scoring.uncertainty`` on the Triton kernel: float32 ``[B]`` in ``[0, 1]``."""
    u, _ = _launch_uncertainty(logits, kind)
    return u


def uncertainty_and_dual_score(
    logits: torch.Tensor,
    misalignment: torch.Tensor | AlignmentScores,
    *,
    kind: str = DEFAULT_UNCERTAINTY,
    weight: float = DEFAULT_WEIGHT,
    method: str = DEFAULT_FUSION,
    missing_roi: str = DEFAULT_MISSING_ROI,
    invalid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DualScore]:
    """``(uncertainty(logits, kind), dual_score(that, misalignment, ...))`` in one kernel for the
    weighted fusion; rank fusion (global over the items given) goes through torch."""
    _check_fusion(weight, method, missing_roi)
    m, alignment_invalid = _split_misalignment(misalignment)
    if method == "rank":
        from xal_core.scoring import dual_score as torch_dual_score

        u, _ = _launch_uncertainty(logits, kind)
        return u, torch_dual_score(
            u, misalignment, weight=weight, method=method, missing_roi=missing_roi, invalid=invalid
        )
    check_logits(logits, "logits", expected_dims=2)
    check_score_pair(logits.new_empty(logits.shape[0], dtype=torch.float32), m)
    fusion = (m, _flagged(m.shape, logits.device, invalid, alignment_invalid), weight, missing_roi == "exclude")
    u, (score, flags) = _launch_uncertainty(logits, kind, fusion)
    return u, _result(score, flags)


def _launch_uncertainty(logits: torch.Tensor, kind: str, fusion: tuple | None = None):
    check_logits(logits, "logits", expected_dims=2)
    check_uncertainty(kind, "kind")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    batch, classes = logits.shape
    device = logits.device
    u = _buffer((batch,), torch.float32, device)
    fused = None
    if fusion is not None:
        m, flagged, weight, exclude = fusion
        m = m.to(device).contiguous()
        weight_t = torch.tensor([float(weight)], dtype=torch.float64, device=device)
        score = _buffer((batch,), torch.float64, device)
        flags = _buffer((batch,), torch.int8, device)
        fused = (score, flags)
    else:
        m, flagged, weight_t, score, flags, exclude = u, u, u, u, u, False  # unused when FUSE=False
    if batch:
        block_b, block_k = _blocks(batch, classes)
        _uncertainty_kernel[(triton.cdiv(batch, block_b),)](
            logits, u, m, flagged, weight_t, score, flags,
            batch, classes, logits.stride(0), math.log(classes),
            KIND=_KIND_CODE[kind], FUSE=fusion is not None, EXCLUDE=bool(exclude),
            BLOCK_B=block_b, BLOCK_K=block_k, num_warps=4,
        )
    warn_nonfinite(int(u.isnan().sum()), "logits")
    return u, fused


def dual_score(
    uncertainty: torch.Tensor,
    misalignment: torch.Tensor | AlignmentScores,
    *,
    weight: float = DEFAULT_WEIGHT,
    method: str = DEFAULT_FUSION,
    missing_roi: str = DEFAULT_MISSING_ROI,
    invalid: torch.Tensor | None = None,
) -> DualScore:
    """``xal_core.scoring.dual_score`` with the weighted fusion on the Triton kernel."""
    m, alignment_invalid = _split_misalignment(misalignment)
    u, m = check_score_pair(uncertainty, m)
    _check_fusion(weight, method, missing_roi)
    if method == "rank":
        from xal_core.scoring import dual_score as torch_dual_score

        return torch_dual_score(uncertainty, misalignment, weight=weight, method=method, missing_roi=missing_roi, invalid=invalid)
    batch = u.shape[0]
    flagged = _flagged(u.shape, u.device, invalid, alignment_invalid)
    score = _buffer((batch,), torch.float64, u.device)
    flags = _buffer((batch,), torch.int8, u.device)
    if batch:
        block = min(triton.next_power_of_2(batch), 1024)
        weight_t = torch.tensor([float(weight)], dtype=torch.float64, device=u.device)
        _dual_score_kernel[(triton.cdiv(batch, block),)](
            u.contiguous(), m.contiguous(), flagged, weight_t, score, flags, batch,
            EXCLUDE=missing_roi == "exclude", BLOCK=block, num_warps=4,
        )
    return _result(score, flags)
