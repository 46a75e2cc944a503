"""Model metadata: string round trip (what ONNX metadata_props and TorchScript extra files carry)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xal_core.models import ModelMetadata, Preprocessing

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


@st.composite
def metadata(draw) -> ModelMetadata:
    channels = draw(st.sampled_from([1, 3]))
    pre = Preprocessing(
        (draw(st.integers(1, 4096)), draw(st.integers(1, 4096))),
        channels,
        tuple(draw(st.lists(finite, min_size=channels, max_size=channels))),
        tuple(draw(st.lists(positive, min_size=channels, max_size=channels))),
    )
    names = tuple(draw(st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=6)))
    return ModelMetadata(names, pre, draw(st.sampled_from(["layer4", "class_layers.relu"])), {"name": "resnet18"}, "dynamo")


@settings(max_examples=60, deadline=None)
@given(metadata())
def test_metadata_round_trips_through_strings(value):
    strings = value.to_strings()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in strings.items())
    assert ModelMetadata.from_strings(strings) == value


def test_missing_and_bad_metadata_name_the_source():
    strings = ModelMetadata(("a", "b"), Preprocessing((8, 8), 1), "layer4").to_strings()
    partial = {k: v for k, v in strings.items() if k != "xal.class_names"}
    with pytest.raises(ValueError, match=r"m.onnx: missing xal metadata \['xal.class_names'\]"):
        ModelMetadata.from_strings(partial, source="m.onnx")
    with pytest.raises(ValueError, match="m.onnx: unreadable xal metadata"):
        ModelMetadata.from_strings({**strings, "xal.input_size": "[8"}, source="m.onnx")


def test_preprocessing_checks_its_values():
    assert Preprocessing((8, 8), 3, (0.5,), (0.25,)).mean == (0.5, 0.5, 0.5)  # one value serves every channel
    with pytest.raises(ValueError, match="mean and std need 1 or 3 values"):
        Preprocessing((8, 8), 3, (0.1, 0.2), (1.0,))
    with pytest.raises(ValueError, match="std must be positive"):
        Preprocessing((8, 8), 1, (0.0,), (0.0,))
    with pytest.raises(ValueError, match="input_size must be"):
        Preprocessing((8,), 1)


def test_normalise_into_a_buffer_is_bit_identical_to_the_allocating_form():
    """``score_chunks`` normalises into reused buffers; the values must be ``(x - mean) / std`` exactly."""
    meta = ModelMetadata(("a", "b"), Preprocessing((9, 7), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "layer4")
    images = torch.rand(5, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    want = (images - mean) / std
    buffer = torch.full((8, 3, 9, 7), float("nan"))
    got = meta.normalise(images, out=buffer[:5])
    assert got.data_ptr() == buffer.data_ptr()
    assert torch.equal(got, want) and torch.equal(meta.normalise(images), want)
    with pytest.raises(ValueError, match=r"normalise: out is torch.float32 \(4, 3, 9, 7\)"):
        meta.normalise(images, out=buffer[:4])
