"""Routing of ``xal_kernels`` by device and ``XAL_KERNELS``."""

from __future__ import annotations

import importlib
import warnings

import kernel_checks as kc  # first: switches Triton to its interpreter
import pytest
import torch

import xal_kernels
from xal_core import scoring
from xal_core.scoring import NonFiniteInputWarning, Roi
from xal_core.scoring.reference import cam_alignment_dense
from xal_kernels import dispatch

pytestmark = pytest.mark.filterwarnings(kc.INTERPRETER_NOISE)
HAS_TRITON = dispatch.triton_available()
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="the kernels need the 'kernels' extra (triton)")


def inputs(batch=3, seed=0):
    features, weights = kc.random_case(batch, 4, 7, 7, torch.float32, seed=seed)
    roi = Roi.from_masks(kc.random_masks(batch, 21, 19, seed=seed + 1), known=[True] * (batch - 1) + [False])
    return features, weights, roi


class Spy:
    """Records which implementation a call reached, then runs it."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.monkeypatch = monkeypatch

    def wrap(self, owner, name, label):
        original = getattr(owner, name)

        def spied(*args, **kwargs):
            self.calls.append(label)
            return original(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, spied)


@pytest.fixture
def spy(monkeypatch):
    s = Spy(monkeypatch)
    s.wrap(dispatch.scoring, "cam_alignment", "torch")
    s.wrap(dispatch.scoring, "uncertainty", "torch")
    s.wrap(dispatch.scoring, "dual_score", "torch")
    s.wrap(dispatch.scoring.alignment, "cam_alignment_reference", "reference")
    s.wrap(importlib.import_module("xal_kernels.cpu_alignment"), "cam_alignment", "numba")
    if HAS_TRITON:
        for module_name, name in (("triton_alignment", "cam_alignment"), ("triton_uncertainty", "uncertainty")):
            s.wrap(importlib.import_module(f"xal_kernels.{module_name}"), name, "triton")
        s.wrap(importlib.import_module("xal_kernels.triton_uncertainty"), "dual_score", "triton")
    return s


def call_all(features, weights, roi):
    logits = torch.randn(features.shape[0], 5)
    alignment = xal_kernels.cam_alignment(features, weights, roi)
    u = xal_kernels.uncertainty(logits, "margin")
    fused = xal_kernels.dual_score(u, alignment)
    return alignment, u, fused


@pytest.mark.parametrize("value", [None, "", "auto", " AUTO ", "numba"])
def test_cpu_alignment_takes_the_compiled_kernel(monkeypatch, spy, value):
    """Alignment of CPU tensors runs on the compiled kernel; uncertainty and fusion stay torch."""
    if value is None:
        monkeypatch.delenv("XAL_KERNELS", raising=False)
    else:
        monkeypatch.setenv("XAL_KERNELS", value)
    features, weights, roi = inputs()
    alignment, _, _ = call_all(features, weights, roi)
    assert spy.calls == ["numba", "torch", "torch"]
    monkeypatch.setenv("XAL_KERNELS", "torch")
    torch_scores = scoring.cam_alignment(features, weights, roi)
    for name in ("dice", "soft_dice", "roi_energy", "pointing_hit"):
        assert torch.allclose(getattr(alignment, name), getattr(torch_scores, name), atol=1e-6, equal_nan=True), name


def test_torch_value_forces_the_separable_path(monkeypatch, spy):
    monkeypatch.setenv("XAL_KERNELS", "torch")
    call_all(*inputs())
    assert spy.calls == ["torch", "torch", "torch"]


def test_without_numba_cpu_tensors_fall_back_to_torch_with_one_warning(monkeypatch, spy):
    monkeypatch.setattr(dispatch, "numba_available", lambda: False)
    monkeypatch.setattr(dispatch, "_warned_no_numba", False)
    monkeypatch.delenv("XAL_KERNELS", raising=False)
    with pytest.warns(RuntimeWarning, match="Numba cannot be imported"):
        call_all(*inputs())
    assert spy.calls == ["torch", "torch", "torch"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        call_all(*inputs())  # warned once per process
    monkeypatch.setenv("XAL_KERNELS", "numba")
    with pytest.raises(xal_kernels.KernelsUnavailableError, match="numba>=0.68.1"):
        xal_kernels.cam_alignment(*inputs())


def test_forcing_numba_on_a_non_cpu_tensor_names_the_device(monkeypatch):
    monkeypatch.setenv("XAL_KERNELS", "numba")
    with pytest.raises(xal_kernels.KernelsUnavailableError, match="takes CPU tensors, got meta"):
        dispatch.backend_for(torch.empty(2, device="meta"))


def test_numba_value_leaves_uncertainty_and_fusion_on_any_device_as_auto(monkeypatch):
    """``XAL_KERNELS=numba`` selects the compiled kernel for alignment only: uncertainty and fusion
    route as ``auto`` on every device (they raised KernelsUnavailableError off the CPU)."""
    monkeypatch.setenv("XAL_KERNELS", "numba")
    meta = torch.empty(3, 4, device="meta")
    for op in ("uncertainty", "fusion"):
        assert dispatch.backend_for(meta, op=op) == "torch"
    with pytest.raises(xal_kernels.KernelsUnavailableError, match="takes CPU tensors, got meta"):
        dispatch.backend_for(meta)  # alignment itself still refuses
    monkeypatch.setenv("XAL_KERNELS", "auto")
    assert dispatch.backend_for(meta, op="uncertainty") == "torch"


@needs_triton
@pytest.mark.interpreter
@pytest.mark.parametrize("value", ["triton", " Triton"])
def test_forcing_triton(monkeypatch, spy, value):
    monkeypatch.setenv("XAL_KERNELS", value)
    features, weights, roi = inputs()
    alignment, _, _ = call_all(features, weights, roi)
    assert spy.calls == ["triton", "triton", "triton"]
    monkeypatch.setenv("XAL_KERNELS", "torch")
    core = scoring.cam_alignment(features, weights, roi)
    assert torch.equal(alignment.dice.isnan(), core.dice.isnan())


def test_reference_route_is_the_dense_float64_reference(monkeypatch, spy):
    monkeypatch.setenv("XAL_KERNELS", "reference")
    features, weights, roi = inputs(4, seed=5)
    weights[1, 0] = float("nan")
    with pytest.warns(NonFiniteInputWarning, match="1 item"):
        got = xal_kernels.cam_alignment(features, weights, roi)
    assert spy.calls == ["reference"]
    clean_w = weights.clone()
    clean_w[1] = 0.0
    dense = cam_alignment_dense(features, clean_w, roi, dtype=torch.float64)
    with pytest.warns(NonFiniteInputWarning):
        core = scoring.cam_alignment(features, weights, roi)
    assert torch.equal(got.invalid, core.invalid)
    for name in ("dice", "soft_dice", "roi_energy", "pointing_hit"):
        g, c = getattr(got, name), getattr(core, name)
        assert torch.equal(g.isnan(), c.isnan()), name
        live = ~g.isnan()
        assert torch.equal(g[live], getattr(dense, name)[live]), name
    # uncertainty and fusion have no separate reference: xal_core.scoring itself
    spy.calls.clear()
    xal_kernels.uncertainty(torch.randn(3, 4))
    assert spy.calls == ["torch"]


@pytest.mark.parametrize("value", ["cuda", "gpu", "triton,torch", "1"])
def test_unknown_value_raises(monkeypatch, value):
    monkeypatch.setenv("XAL_KERNELS", value)
    features, weights, roi = inputs()
    with pytest.raises(ValueError, match="XAL_KERNELS=.* is not one of auto, triton, numba, torch, reference"):
        xal_kernels.cam_alignment(features, weights, roi)
    with pytest.raises(ValueError, match="XAL_KERNELS"):
        xal_kernels.uncertainty(torch.randn(2, 3))
    with pytest.raises(ValueError, match="XAL_KERNELS"):
        xal_kernels.dual_score(torch.rand(2), torch.rand(2))


def test_forcing_triton_without_triton_names_the_extra(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    features, weights, roi = inputs()
    monkeypatch.setenv("XAL_KERNELS", "triton")
    with pytest.raises(xal_kernels.KernelsUnavailableError, match=r"xal-ml\[kernels\]"):
        xal_kernels.cam_alignment(features, weights, roi)
    with pytest.raises(RuntimeError, match="'kernels' extra"):
        xal_kernels.uncertainty(torch.randn(2, 3))
    monkeypatch.setenv("XAL_KERNELS", "auto")
    scores = xal_kernels.cam_alignment(features, weights, roi)  # the CPU path still works
    assert torch.equal(scores.dice.isnan(), torch.tensor([False, False, True]))


def test_auto_on_cuda_without_triton_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    monkeypatch.setattr(dispatch, "_warned_no_triton", False)
    monkeypatch.delenv("XAL_KERNELS", raising=False)

    class FakeCuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    tensor = torch.zeros(1).as_subclass(FakeCuda)
    with pytest.warns(RuntimeWarning, match="kernels"):
        assert dispatch.backend_for(tensor) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.backend_for(tensor) == "torch"


def test_cuda_tensors_route_to_triton_under_auto(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.delenv("XAL_KERNELS", raising=False)

    class FakeCuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    assert dispatch.backend_for(torch.zeros(1).as_subclass(FakeCuda)) == "triton"
    assert dispatch.backend_for(torch.zeros(1)) == "numba"


@needs_triton
def test_forcing_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("XAL_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(xal_kernels.KernelsUnavailableError, match="TRITON_INTERPRET=1"):
        xal_kernels.uncertainty(torch.randn(2, 3))


def test_validation_errors_surface_on_every_route(monkeypatch):
    for value in ["auto", "numba", "torch", "reference"] + (["triton"] if HAS_TRITON else []):
        monkeypatch.setenv("XAL_KERNELS", value)
        with pytest.raises(ValueError, match="features: expected a torch.Tensor"):
            xal_kernels.cam_alignment("not a tensor", torch.rand(2, 3), None)
        with pytest.raises(ValueError, match="threshold"):
            xal_kernels.cam_alignment(*inputs(), threshold=0.0)


def test_package_keeps_routed_names_after_op_imports():
    if HAS_TRITON:
        importlib.import_module("xal_kernels.triton_alignment")
        importlib.import_module("xal_kernels.triton_uncertainty")
    assert xal_kernels.cam_alignment is dispatch.cam_alignment
    assert xal_kernels.uncertainty is dispatch.uncertainty
