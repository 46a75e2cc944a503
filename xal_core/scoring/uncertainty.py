"""Predictive uncertainty of a classifier, each measure scaled to [0, 1] (docs/contract.md).

References:
    Settles, *Active Learning Literature Survey*, 2009 (entropy, margin, least confidence).
    Houlsby et al., *Bayesian Active Learning for Classification and Preference Learning*, 2011,
    and Gal et al., *Deep Bayesian Active Learning with Image Data*, ICML 2017 (BALD, MC dropout).
"""

from __future__ import annotations

import math

import torch

from .inputs import nonfinite_items, warn_nonfinite
from .parameters import DEFAULT_UNCERTAINTY, UNCERTAINTY_KINDS, UncertaintyKind, check_uncertainty

__all__ = ["UncertaintyKind", "UNCERTAINTY_KINDS", "bald", "check_logits", "uncertainty"]


def uncertainty(logits: torch.Tensor, kind: UncertaintyKind = DEFAULT_UNCERTAINTY) -> torch.Tensor:
    """Per-item uncertainty from logits ``[B, K]`` (``K >= 2``), float32 ``[B]`` in ``[0, 1]``.

    * ``entropy``: ``−Σ p log p / log K``;
    * ``margin``: ``1 − (p₁ − p₂)`` with ``p₁ ≥ p₂`` the two largest probabilities;
    * ``least_confidence``: ``(1 − p₁)·K/(K − 1)``.

    Rows with NaN/Inf logits come back NaN (a ``NonFiniteInputWarning`` gives the count).
    """
    check_logits(logits, "logits", expected_dims=2)
    check_uncertainty(kind, "kind")
    invalid = nonfinite_items(logits)
    log_p = torch.log_softmax(torch.where(invalid[:, None], 0.0, logits.to(torch.float64)), dim=1)
    classes = logits.shape[1]
    if kind == "entropy":
        value = _entropy(log_p) / math.log(classes)
    else:
        top = log_p.exp().topk(2, dim=1).values
        if kind == "margin":
            value = 1.0 - (top[:, 0] - top[:, 1])
        else:
            value = (1.0 - top[:, 0]) * classes / (classes - 1)
    value = value.clamp(0.0, 1.0).masked_fill(invalid, float("nan"))
    warn_nonfinite(int(invalid.sum()), "logits")
    return value.to(torch.float32)


def bald(logits_mc: torch.Tensor) -> torch.Tensor:
    """BALD mutual information from ``T`` stochastic passes ``[T, B, K]``, divided by ``log K``.

    ``I = H(mean_t p_t) − mean_t H(p_t)``; it lies in ``[0, log K]``, hence the scaling to [0, 1].
    """
    check_logits(logits_mc, "logits_mc", expected_dims=3)
    invalid = nonfinite_items(logits_mc.transpose(0, 1))
    clean = torch.where(invalid[None, :, None], 0.0, logits_mc.to(torch.float64))
    log_p = torch.log_softmax(clean, dim=2)
    mean_log_p = torch.logsumexp(log_p, dim=0) - math.log(logits_mc.shape[0])
    information = _entropy(mean_log_p) - _entropy(log_p).mean(dim=0)
    value = (information / math.log(logits_mc.shape[2])).clamp(0.0, 1.0).masked_fill(invalid, float("nan"))
    warn_nonfinite(int(invalid.sum()), "MC logits")
    return value.to(torch.float32)


def _entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis; ``0·log 0`` counts as 0."""
    p = log_p.exp()
    return -(torch.where(p > 0, p * log_p, torch.zeros_like(p))).sum(dim=-1)


def check_logits(logits: torch.Tensor, name: str, expected_dims: int) -> None:
    """``ValueError`` naming ``name`` unless ``logits`` is a float tensor of ``expected_dims`` with K >= 2."""
    layout = "[B, K]" if expected_dims == 2 else "[T, B, K]"
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor {layout}, got {type(logits).__name__}")
    if logits.dim() != expected_dims:
        raise ValueError(f"{name}: expected shape {layout}, got {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"{name}: expected a floating dtype, got {logits.dtype}")
    if logits.shape[-1] < 2:
        raise ValueError(f"{name}: needs K >= 2 classes to measure uncertainty, got K = {logits.shape[-1]}")
    if expected_dims == 3 and logits.shape[0] < 1:
        raise ValueError(f"{name}: needs at least one stochastic pass, got T = 0")
