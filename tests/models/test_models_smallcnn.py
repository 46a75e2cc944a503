"""``smallcnn``: an 8×8 CAM at 64², analytic Grad-CAM weights, export to ONNX / TorchScript and back."""

from __future__ import annotations

import pytest
import torch
from model_helpers import one_torch_thread, tiny_backbone  # noqa: F401 (autouse fixture)

from xal_core.models import (
    BackboneConfig,
    ExplainableModel,
    ModelMetadata,
    Preprocessing,
    build_backbone,
    export,
    load_checkpoint,
)
from xal_core.models.runtime import load
from xal_core.models.smallcnn import SmallCNN
from xal_core.train import TrainConfig, fit

SIZE = 64


def test_stride_8_gives_an_8x8_grid_and_a_gap_linear_head():
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("smallcnn", in_channels=1, num_classes=3)).eval()
    assert model.analytic and model.target_layer == "features"
    with torch.no_grad():
        logits, features, cam_weights = model(torch.randn(2, 1, SIZE, SIZE))
    assert logits.shape == (2, 3) and features.shape == (2, 128, 8, 8) and cam_weights.shape == (2, 128)
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7


def test_analytic_weights_equal_autograd_weights():
    model = tiny_backbone("smallcnn", in_channels=1, num_classes=3)
    x = torch.randn(3, 1, SIZE, SIZE)
    target = torch.tensor([0, 2, 1])
    logits, features, weights = ExplainableModel(model)(x, target)
    grad_logits, grad_features, grad_weights = ExplainableModel(model, method="autograd")(x, target)
    torch.testing.assert_close(logits, grad_logits)
    torch.testing.assert_close(features, grad_features)
    torch.testing.assert_close(weights, grad_weights, rtol=1e-5, atol=1e-7)


def test_width_is_recorded_only_when_changed_and_survives_a_checkpoint(tmp_path):
    assert "smallcnn_width" not in BackboneConfig("smallcnn", 1, 2).to_dict()
    assert "smallcnn_width" not in BackboneConfig("resnet18", 1, 2).to_dict()  # older records read the same
    narrow = BackboneConfig("smallcnn", 1, 2, smallcnn_width=8)
    assert BackboneConfig.from_dict(narrow.to_dict()) == narrow
    torch.manual_seed(0)
    result = fit(build_backbone(narrow), torch.rand(8, 1, 32, 32), torch.arange(8) % 2,
                 config=TrainConfig(epochs=1, batch_size=4, val_fraction=0.0), checkpoint_path=tmp_path / "m.pt",
                 progress=False)
    rebuilt = load_checkpoint(result.checkpoint_path).build()
    assert isinstance(rebuilt, SmallCNN) and rebuilt.fc.in_features == 32
    with pytest.raises(ValueError, match="ResNets only"):
        BackboneConfig("smallcnn", 1, 2, output_stride=16)
    with pytest.raises(ValueError, match="smallcnn_width must be >= 1"):
        BackboneConfig("smallcnn", 1, 2, smallcnn_width=0)


@pytest.mark.parametrize("fmt, exporter", [("onnx", "dynamo"), ("onnx", "legacy"), ("torchscript", None)])
def test_exports_run_in_the_service_runtimes_like_eager_torch(tmp_path, fmt, exporter):
    model = tiny_backbone("smallcnn", in_channels=1, num_classes=2)
    metadata = ModelMetadata(class_names=("a", "b"), preprocessing=Preprocessing((SIZE, SIZE), 1, (0.5,), (0.25,)),
                             target_layer="features", architecture=model.xal_config.to_dict())
    options = {"onnx_exporter": exporter} if exporter else {}
    result = export(model, tmp_path / f"model.{fmt}", fmt, metadata=metadata, **options)
    if exporter == "dynamo":
        assert result.exporter == "dynamo", result.fallback_reason  # no fallback needed
    runtime = load(result.path)
    x = torch.randn(3, 1, SIZE, SIZE)
    with torch.no_grad():
        expected = ExplainableModel(model)(x)
    outputs = runtime.run(x)
    assert outputs.features.shape == (3, 128, 8, 8)
    torch.testing.assert_close(outputs.logits, expected[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(outputs.features, expected[1], rtol=0, atol=1e-4)
    torch.testing.assert_close(outputs.cam_weights, expected[2], rtol=0, atol=1e-6)
    assert runtime.metadata.architecture["name"] == "smallcnn"
