"""Training: determinism, class weights, early stopping, augmentations, checkpoints."""

from __future__ import annotations

import pytest
import torch
from model_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from torch.utils.data import TensorDataset

from xal_core.models import build_backbone, load_checkpoint
from xal_core.train import Augment, TrainConfig, class_weights, fit

FAST = {"batch_size": 8, "augment": Augment(), "lr": 1e-3}


def _data(n: int = 24, channels: int = 1, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 4 == 0).long()  # imbalanced: 1 in 4 is class 1
    images = torch.rand(n, channels, size, size, generator=generator) + labels[:, None, None, None] * 0.5
    return images, labels


def _model(seed: int = 1, channels: int = 1):
    torch.manual_seed(seed)
    return build_backbone("resnet18", channels, 2)


def test_fit_is_deterministic_on_cpu_and_records_everything(tmp_path):
    images, labels = _data()
    config = TrainConfig(epochs=2, **FAST)
    first = fit(_model(), images, labels, config=config, class_names=["normal", "lesion"],
                checkpoint_path=tmp_path / "a.pt", progress=False)
    second = fit(_model(), images, labels, config=config, class_names=["normal", "lesion"],
                 checkpoint_path=tmp_path / "b.safetensors", progress=False)
    for key, value in first.checkpoint.state_dict.items():
        assert torch.equal(value, second.checkpoint.state_dict[key]), key
    assert [r["val_loss"] for r in first.history] == [r["val_loss"] for r in second.history]
    for path in (first.checkpoint_path, second.checkpoint_path):
        loaded = load_checkpoint(path)
        assert loaded.class_names == ("normal", "lesion")
        assert loaded.architecture.name == "resnet18"
        assert loaded.preprocessing.input_size == (32, 32) and loaded.preprocessing.channels == 1
        assert loaded.config["train"]["epochs"] == 2 and len(loaded.config["history"]) == 2
        torch.testing.assert_close(loaded.build().state_dict()["fc.weight"], first.model.state_dict()["fc.weight"])
    # the normalisation recorded is the training split's per-channel statistics
    mean = first.checkpoint.preprocessing.mean[0]
    assert 0.5 < mean < 0.75


def test_a_different_seed_gives_different_weights():
    images, labels = _data()
    a = fit(_model(), images, labels, config=TrainConfig(epochs=1, seed=0, **FAST), progress=False)
    b = fit(_model(), images, labels, config=TrainConfig(epochs=1, seed=5, **FAST), progress=False)
    assert not torch.equal(a.checkpoint.state_dict["fc.weight"], b.checkpoint.state_dict["fc.weight"])


def test_early_stopping_restores_the_best_epoch():
    images, labels = _data()
    # min_delta so large that no epoch after the first counts as better
    config = TrainConfig(epochs=6, patience=2, min_delta=1e9, **FAST)
    result = fit(_model(), images, labels, config=config, progress=False)
    assert result.stopped_early and result.best_epoch == 1 and len(result.history) == 3
    result_one = fit(_model(), images, labels, config=TrainConfig(epochs=1, **FAST), progress=False)
    for key, value in result_one.checkpoint.state_dict.items():
        assert torch.equal(value, result.checkpoint.state_dict[key]), key


def test_class_weighting_changes_training():
    images, labels = _data()
    weighted = fit(_model(), images, labels, config=TrainConfig(epochs=1, **FAST), progress=False)
    plain = fit(_model(), images, labels, config=TrainConfig(epochs=1, class_weighted=False, **FAST), progress=False)
    assert not torch.equal(weighted.checkpoint.state_dict["fc.weight"], plain.checkpoint.state_dict["fc.weight"])
    held_out = 5  # round(24 · 0.2), drawn by a permutation seeded with config.seed
    train_items = torch.randperm(24, generator=torch.Generator().manual_seed(0))[held_out:]
    assert weighted.checkpoint.config["class_counts"] == torch.bincount(labels[train_items], minlength=2).tolist()


def test_class_weights_are_inverse_frequency():
    weights = class_weights(torch.tensor([30, 10, 0]))
    torch.testing.assert_close(weights, torch.tensor([40 / 60, 40 / 20, 0.0]))


def test_dataset_input_and_explicit_validation_set_and_rgb():
    images, labels = _data(n=12, channels=3, size=32)
    val_images, val_labels = _data(n=6, channels=3, size=32, seed=1)
    result = fit(_model(channels=3), TensorDataset(images, labels), config=TrainConfig(epochs=1, **FAST),
                 val_data=val_images, val_labels=val_labels, progress=True)
    assert result.history[0]["val_accuracy"] in {k / 6 for k in range(7)}
    assert result.checkpoint.preprocessing.channels == 3 and len(result.checkpoint.preprocessing.mean) == 3


def test_bad_training_inputs_are_named():
    images, labels = _data(n=8)
    with pytest.raises(ValueError, match="labels are required"):
        fit(_model(), images, config=TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        fit(_model(), images, labels + 2, config=TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="labels must be integers"):
        fit(_model(), images, labels.float(), config=TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="images have 3 channel"):
        fit(_model(), images.expand(-1, 3, -1, -1), labels, config=TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="3 class names for a model with 2 classes"):
        fit(_model(), images, labels, class_names=["a", "b", "c"], progress=False)
    with pytest.raises(ValueError, match="val_fraction must lie in"):
        TrainConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="1 training item"):
        fit(_model(), images[:2], labels[:2], config=TrainConfig(epochs=1, val_fraction=0.5), progress=False)
    with pytest.raises(ValueError, match="no xal_config"):
        fit(torch.nn.Linear(2, 2), images, labels, progress=False)


def test_augment_is_seeded_shape_preserving_and_mild():
    images = torch.rand(4, 1, 32, 32)
    augment = Augment(hflip=0.5, rotate_deg=10, translate=0.05, scale=0.1, contrast=0.1, brightness=0.1)
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, images)
    assert (a - images).abs().mean() < 0.5
    assert torch.equal(Augment.none()(images, torch.Generator()), images)
    flipped = Augment(hflip=1.0, vflip=0.0, rotate_deg=0, translate=0, scale=0, contrast=0, brightness=0)
    assert torch.equal(flipped(images, torch.Generator()), images.flip(-1))
    with pytest.raises(ValueError, match="hflip is a probability"):
        Augment(hflip=2.0)
