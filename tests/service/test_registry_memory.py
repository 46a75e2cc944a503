"""The registry holds at most ``max_loaded`` model runtimes; the others reload from their file on use.

An active-learning run loads a new model every round; without eviction a long-lived server keeps
every ONNX Runtime session and its memory arena (the demo's server grew past 3 GB by round 4).
"""

from __future__ import annotations

import logging

import pytest
import torch

from xal_core.models import build_backbone, export
from xal_service.errors import RequestError
from xal_service.registry.registry import Registry
from xal_service.registry.roots import PathRoots


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        paths.append(export(build_backbone("resnet10", 1, 2), root / f"m{seed}.onnx", "onnx", (1, 32, 32),
                            onnx_exporter="legacy").path)
    return paths


def test_only_the_most_recently_used_runtimes_stay_loaded(tmp_path, model_files):
    registry = Registry(tmp_path, max_loaded=2)
    for n, path in enumerate(model_files):
        registry.load_model(f"m{n}", path)
    assert [m.loaded for m in registry.models.values()] == [False, True, True]
    images = torch.rand(2, 1, 32, 32)
    first = registry.model("m0")  # marked as used: reloads, and m1 becomes the least recently used
    logits, _, _ = first.runtime.run(first.metadata.normalise(images))
    assert logits.shape == (2, 2)
    assert {name: m.loaded for name, m in registry.models.items()} == {"m1": False, "m2": True, "m0": True}
    assert registry.model("m1").metadata.input_size == (32, 32)  # metadata without a reload


def test_an_evicted_model_whose_file_is_gone_says_so(tmp_path, model_files):
    registry = Registry(tmp_path, max_loaded=1)
    copy = tmp_path / "gone.onnx"
    copy.write_bytes(model_files[0].read_bytes())
    registry.load_model("gone", copy)
    registry.load_model("other", model_files[1])
    copy.unlink()
    with pytest.raises(RequestError, match="unloaded to save memory.*LoadModel it again"):
        registry.model("gone").runtime  # noqa: B018 - the property reloads


def test_restore_respects_the_cap(tmp_path, model_files):
    """(A restored model must still lie under the model roots: here, the folder of the files.)"""
    registry = Registry(tmp_path, max_loaded=2)
    for n, path in enumerate(model_files):
        registry.load_model(f"m{n}", path)
    again = Registry(tmp_path, max_loaded=2, model_roots=PathRoots("model", [model_files[0].parent]))
    again.restore(logging.getLogger("test"))
    assert sorted(again.models) == ["m0", "m1", "m2"]
    assert sum(m.loaded for m in again.models.values()) == 2
