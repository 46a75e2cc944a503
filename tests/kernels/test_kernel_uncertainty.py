"""The fused uncertainty / dual-score kernels against ``xal_core.scoring``, under TRITON_INTERPRET=1."""

from __future__ import annotations

import importlib
import math
import warnings

import kernel_checks as kc  # first: switches Triton to its interpreter
import pytest
import torch

from xal_core.scoring import UNCERTAINTY_KINDS, AlignmentScores, NonFiniteInputWarning
from xal_core.scoring import dual_score as core_dual_score
from xal_core.scoring import uncertainty as core_uncertainty

pytest.importorskip("triton", reason="the kernels need the 'kernels' extra (triton)")
pytestmark = [pytest.mark.interpreter, pytest.mark.filterwarnings(kc.INTERPRETER_NOISE)]

op = kc.on_device(importlib.import_module("xal_kernels.triton_uncertainty"))

LOGIT_DTYPES = {torch.float16: 2e-6, torch.bfloat16: 2e-6, torch.float32: 2e-6, torch.float64: 2e-6}


def logits_case(batch: int, classes: int, dtype: torch.dtype, seed: int, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, classes, generator=gen) * scale + 0.1).to(dtype)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteInputWarning)
        return fn(*args, **kwargs)


@pytest.mark.parametrize("kind", UNCERTAINTY_KINDS)
@pytest.mark.parametrize("batch, classes", [(1, 2), (37, 3), (5, 1000), (3, 1500), (130, 7)])
def test_uncertainty_matches_core(kind, batch, classes):
    for index, (dtype, atol) in enumerate(LOGIT_DTYPES.items()):
        logits = logits_case(batch, classes, dtype, seed=batch * 1000 + classes + index)
        got = op.uncertainty(logits, kind)
        ref = core_uncertainty(logits, kind)
        assert got.dtype == torch.float32 and got.shape == (batch,)
        worst = (got.double() - ref.double()).abs().max().item()
        assert worst <= atol, f"{kind} {dtype} B={batch} K={classes}: max error {worst:.2e}"


@pytest.mark.parametrize("kind", UNCERTAINTY_KINDS)
def test_uncertainty_edge_rows(kind):
    """Uniform rows (U = 1), one-hot-like rows (U ≈ 0), tied top-2, huge logits, NaN/Inf rows."""
    logits = torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0],
            [80.0, -80.0, 0.0, 3.0],
            [2.0, 2.0, 0.5, -1.0],
            [1e30, 1e30 * 0.999, 0.0, 1.0],
            [float("nan"), 0.0, 1.0, 2.0],
            [0.0, float("inf"), 1.0, 2.0],
            [-float("inf"), 0.0, 1.0, 2.0],
            [0.3, -0.2, 0.1, 0.0],
        ]
    )
    with pytest.warns(NonFiniteInputWarning, match="3 item"):
        got = op.uncertainty(logits, kind)
    ref = quiet(core_uncertainty, logits, kind)
    assert torch.equal(got.isnan(), ref.isnan())
    assert got.isnan().tolist() == [False] * 4 + [True] * 3 + [False]
    assert torch.allclose(got, ref, atol=2e-6, equal_nan=True), (got, ref)
    assert got[0].item() == pytest.approx(1.0, abs=1e-6)


def test_strided_logits_and_poisoned_output(monkeypatch):
    monkeypatch.setattr(op, "_buffer", lambda shape, dtype, device: torch.full(shape, -7, dtype=dtype, device=device))
    wide = logits_case(19, 12, torch.float32, seed=3)
    logits = wide[:, ::2]  # non-contiguous
    for kind in UNCERTAINTY_KINDS:
        got = op.uncertainty(logits, kind)
        assert not (got == -7).any()
        assert torch.allclose(got, core_uncertainty(logits, kind), atol=2e-6)


@pytest.mark.parametrize("bad, message", [
    (lambda: torch.randn(3), "logits: expected shape"),
    (lambda: torch.randn(3, 1), "K >= 2"),
    (lambda: torch.ones(3, 4, dtype=torch.int64), "floating dtype"),
])
def test_uncertainty_validation_matches_core(bad, message):
    with pytest.raises(ValueError, match=message) as core_error:
        core_uncertainty(bad())
    with pytest.raises(ValueError) as kernel_error:
        op.uncertainty(bad())
    assert str(kernel_error.value) == str(core_error.value)
    with pytest.raises(ValueError, match="kind"):
        op.uncertainty(torch.randn(3, 4), "variance")


# --------------------------------------------------------------------------- dual score
def fusion_case(batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(batch, generator=gen) * 0.98 + 0.01
    m = torch.rand(batch, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    u[1] = float("nan")  # broken logits
    m[2] = float("nan")  # unknown ROI
    m[3] = float("inf")  # corrupt misalignment
    m[5] = float("nan")
    invalid = torch.zeros(batch, dtype=torch.bool)
    invalid[5] = True  # flagged upstream and unknown ROI: invalid wins
    invalid[6] = True
    return u, m, invalid


def assert_same_fusion(got, ref):
    assert got.score.dtype == torch.float64
    assert torch.equal(got.invalid, ref.invalid), (got.invalid, ref.invalid)
    assert torch.equal(got.excluded, ref.excluded), (got.excluded, ref.excluded)
    assert torch.equal(got.score.isnan(), ref.score.isnan())
    assert torch.equal(got.score.isinf(), ref.score.isinf())
    assert torch.allclose(got.score, ref.score, atol=1e-12, rtol=0, equal_nan=True), (got.score, ref.score)


@pytest.mark.parametrize("missing_roi", ["uncertainty_only", "exclude"])
@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_dual_score_matches_core(missing_roi, weight):
    u, m, invalid = fusion_case(41, seed=int(weight * 10))
    ref = quiet(core_dual_score, u, m, weight=weight, missing_roi=missing_roi, invalid=invalid)
    with pytest.warns(NonFiniteInputWarning, match=f"{ref.n_invalid} item"):
        got = op.dual_score(u, m, weight=weight, missing_roi=missing_roi, invalid=invalid)
    assert_same_fusion(got, ref)


def test_dual_score_with_alignment_scores_and_rank_fusion():
    u, m, invalid = fusion_case(23, seed=4)
    dice = (1.0 - m).float()
    alignment = AlignmentScores(dice, dice.clone(), dice.clone(), dice.clone(), invalid.clone())
    for method in ("weighted", "rank"):
        for missing_roi in ("uncertainty_only", "exclude"):
            ref = quiet(core_dual_score, u, alignment, method=method, missing_roi=missing_roi)
            got = quiet(op.dual_score, u, alignment, method=method, missing_roi=missing_roi)
            assert_same_fusion(got, ref)


@pytest.mark.parametrize("kind", UNCERTAINTY_KINDS)
@pytest.mark.parametrize("missing_roi", ["uncertainty_only", "exclude"])
def test_fused_logits_to_score(kind, missing_roi, monkeypatch):
    monkeypatch.setattr(op, "_buffer", lambda shape, dtype, device: torch.full(shape, -7, dtype=dtype, device=device))
    logits = logits_case(29, 5, torch.float32, seed=9)
    logits[4, 2] = float("nan")
    _, m, invalid = fusion_case(29, seed=10)
    u_ref = quiet(core_uncertainty, logits, kind)
    ref = quiet(core_dual_score, u_ref, m, weight=0.4, missing_roi=missing_roi, invalid=invalid)
    u, got = quiet(op.uncertainty_and_dual_score, logits, m, kind=kind, weight=0.4, missing_roi=missing_roi, invalid=invalid)
    assert torch.allclose(u, u_ref, atol=2e-6, equal_nan=True)
    assert torch.equal(got.invalid, ref.invalid) and torch.equal(got.excluded, ref.excluded)
    assert torch.allclose(got.score, ref.score, atol=2e-6, equal_nan=True)
    assert not (got.score == -7).any()
    u2, ranked = quiet(op.uncertainty_and_dual_score, logits, m, kind=kind, method="rank", missing_roi=missing_roi)
    assert_same_fusion(ranked, quiet(core_dual_score, u2, m, method="rank", missing_roi=missing_roi))


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight=1.5), "weight"),
    (dict(weight="0.5"), "weight"),
    (dict(method="mean"), "method"),
    (dict(missing_roi="zero"), "missing_roi"),
    (dict(invalid=torch.zeros(3, dtype=torch.bool)), "invalid: expected shape"),
])
def test_dual_score_validation_matches_core(kwargs, message):
    u, m, _ = fusion_case(8, seed=1)
    with pytest.raises(ValueError, match=message) as core_error:
        quiet(core_dual_score, u, m, **kwargs)
    with pytest.raises(ValueError) as kernel_error:
        quiet(op.dual_score, u, m, **kwargs)
    assert str(kernel_error.value) == str(core_error.value)
    with pytest.raises(ValueError, match="misalignment: holds"):
        op.dual_score(u, m[:3])


def test_empty_batch():
    assert op.uncertainty(torch.zeros(0, 3), "margin").shape == (0,)
    result = op.dual_score(torch.zeros(0), torch.zeros(0))
    assert result.score.shape == (0,) and result.n_invalid == 0
    assert not math.isnan(op.dual_score(torch.tensor([0.2]), torch.tensor([0.6])).score.item())
