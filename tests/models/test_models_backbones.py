"""Backbones: architectures, the stride-2 ResNet stem, weights from local files only."""

from __future__ import annotations

import pytest
import torch
from model_helpers import TINY_DENSENET, one_torch_thread, tiny_backbone  # noqa: F401 (autouse fixture)

from xal_core.models import (
    ARCHITECTURES,
    BackboneConfig,
    Checkpoint,
    ExplainableModel,
    Preprocessing,
    build_backbone,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_each_backbone_at_224_gives_a_7x7_grid(name):
    """(``smallcnn``, stride 8, gives 28×28: it is sized for 64² inputs, an 8×8 grid there.)"""
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone(name, in_channels=3, num_classes=4)).eval()
    with torch.no_grad():
        logits, features, cam_weights = model(torch.randn(1, 3, 224, 224))
    channels = {"densenet121": 1024, "resnet10": 512, "resnet18": 512, "resnet34": 512, "resnet50": 2048,
                "smallcnn": 128}[name]
    grid = 28 if name == "smallcnn" else 7
    assert logits.shape == (1, 4)
    assert features.shape == (1, channels, grid, grid)
    assert cam_weights.shape == (1, channels)


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet34", "resnet50"])
def test_resnet_has_the_imagenet_stride_2_stem(name):
    model = build_backbone(name, 1, 2)
    assert model.conv1.stride == (2, 2)
    assert model.conv1.kernel_size == (7, 7)


@pytest.mark.parametrize("name", ["resnet10", "resnet18"])
def test_output_stride_16_halves_the_cam_cell_and_round_trips(name, tmp_path):
    """Stride 16 leaves the stem's max-pool out: a 4×4 CAM at 64×64 instead of 2×2, the same
    weights' shapes, and the setting survives a checkpoint (older records, without it, read as 32)."""
    coarse_net, fine_net = build_backbone(BackboneConfig(name, 1, 2)), build_backbone(BackboneConfig(name, 1, 2, output_stride=16))
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert ExplainableModel(coarse_net).eval()(x)[1].shape[2:] == (2, 2)
        assert ExplainableModel(fine_net).eval()(x)[1].shape[2:] == (4, 4)
    assert {k: v.shape for k, v in coarse_net.state_dict().items()} == {k: v.shape for k, v in fine_net.state_dict().items()}
    config = BackboneConfig(name, 1, 2, output_stride=16)
    assert BackboneConfig.from_dict(config.to_dict()) == config
    assert "output_stride" not in BackboneConfig(name, 1, 2).to_dict()
    assert BackboneConfig.from_dict(BackboneConfig(name, 1, 2).to_dict()).output_stride == 32


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="output_stride must be 32 or 16"):
        BackboneConfig("resnet18", 1, 2, output_stride=8)
    with pytest.raises(ValueError, match="for the ResNets only"):
        BackboneConfig("densenet121", 1, 2, output_stride=16)
    with pytest.raises(ValueError, match="unknown architecture 'vgg16'"):
        build_backbone("vgg16", 1, 2)
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        build_backbone("resnet18", 2, 2)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_backbone("resnet18", 1, 1)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    model = tiny_backbone("densenet121", in_channels=3, num_classes=2)
    checkpoint = Checkpoint(
        architecture=model.xal_config,
        state_dict=model.state_dict(),
        class_names=("normal", "pneumonia"),
        preprocessing=Preprocessing((32, 32), 3, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0)),
        config={"epochs": 1},
    )
    path = save_checkpoint(checkpoint, tmp_path / f"model{suffix}")
    loaded = load_checkpoint(path)
    assert loaded.architecture == BackboneConfig("densenet121", 3, 2, **TINY_DENSENET)
    assert loaded.class_names == ("normal", "pneumonia")
    assert loaded.preprocessing == checkpoint.preprocessing
    assert loaded.config == {"epochs": 1}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.build()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_plain_state_dict_loads_and_other_architecture_is_refused(tmp_path, suffix):
    source = tiny_backbone("resnet18", num_classes=3)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = load_weights(build_backbone("resnet18", 1, 3).eval(), path)
    built = build_backbone("resnet18", 1, 3, weights=path).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
        torch.testing.assert_close(built(x), source(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=rf"weights{suffix}.*do not fit the resnet34 architecture.*missing keys"):
        load_weights(build_backbone("resnet34", 1, 3), path)
    with pytest.raises(ValueError, match=rf"weights{suffix}.*do not fit the resnet18 architecture.*shape mismatches"):
        load_weights(build_backbone("resnet18", 1, 5), path)
    with pytest.raises(ValueError, match=rf"weights{suffix}.*do not fit the densenet121 architecture"):
        build_backbone("densenet121", 1, 3, weights=path)


def test_missing_corrupt_and_foreign_weight_files(tmp_path):
    with pytest.raises(ValueError, match="nothere.pt: no such weights file"):
        load_weights(build_backbone("resnet18", 1, 2), tmp_path / "nothere.pt")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.safetensors: unreadable safetensors file"):
        load_weights(build_backbone("resnet18", 1, 2), corrupt)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt: unreadable weights file"):
        load_weights(build_backbone("resnet18", 1, 2), junk)
    bare = tmp_path / "bare.pt"
    torch.save(build_backbone("resnet18", 1, 2).state_dict(), bare)
    with pytest.raises(ValueError, match="bare.pt: not an xal checkpoint"):
        load_checkpoint(bare)
