"""ExplainableModel: analytic Grad-CAM weights against autograd, MONAI's GradCAM and Captum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import FlattenHeadNet, minmax, one_torch_thread, reference_gradcam_weights, tiny_backbone  # noqa: F401 (autouse fixture)

from xal_core.models import ExplainableModel
from xal_core.scoring import gradcam_maps

LAYERS = {"resnet18": "layer4", "resnet50": "layer4", "densenet121": "class_layers.relu"}


def _layer(model, name):
    return dict(model.named_modules())[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_analytic_weights_equal_autograd_weights(name):
    model = tiny_backbone(name, num_classes=4)
    x = torch.randn(3, 1, 64, 64)
    analytic = ExplainableModel(model)
    assert analytic.analytic and analytic.target_layer == LAYERS[name]
    autograd = ExplainableModel(model, method="autograd")
    assert not autograd.analytic
    with torch.no_grad():
        logits, features, weights = analytic(x)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=1e-6)
    grad_logits, grad_features, grad_weights = autograd(x)
    torch.testing.assert_close(logits, grad_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(features, grad_features, rtol=0, atol=1e-5)
    torch.testing.assert_close(weights, grad_weights, rtol=0, atol=1e-5)
    # and against Grad-CAM computed from the definition with plain hooks
    reference = reference_gradcam_weights(model, _layer(model, LAYERS[name]), x, logits.argmax(1))
    torch.testing.assert_close(weights, reference, rtol=0, atol=1e-5)
    assert weights.abs().max() > 1e-4  # the comparison is not between zeros


def test_a_given_target_class_is_used_by_both_paths():
    model = tiny_backbone("resnet18", num_classes=4)
    x = torch.randn(2, 1, 64, 64)
    target = torch.tensor([3, 0])
    with torch.no_grad():
        _, _, weights = ExplainableModel(model)(x, target)
    _, _, grad_weights = ExplainableModel(model, method="autograd")(x, target)
    torch.testing.assert_close(weights, grad_weights, rtol=0, atol=1e-5)
    torch.testing.assert_close(weights, model.fc.weight[target] / 4, rtol=0, atol=0)  # 2×2 grid at 64²
    with torch.no_grad(), pytest.raises(ValueError, match=r"target_class: classes must lie in \[0, 4\)"):
        ExplainableModel(model)(x, torch.tensor([4, 0]))


def test_autograd_path_for_a_head_without_gap_and_under_no_grad():
    torch.manual_seed(0)
    model = FlattenHeadNet().eval()
    with pytest.raises(ValueError, match="no recognised GAP \\+ linear head"):
        ExplainableModel(model)
    wrapped = ExplainableModel(model, target_layer="features")
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():  # the service's inference context: the autograd path re-enables grad itself
        logits, features, weights = wrapped(x)
    assert features.shape == (3, 8, 8, 8) and weights.shape == (3, 8)
    reference = reference_gradcam_weights(model, model.features, x, logits.argmax(1))
    torch.testing.assert_close(weights, reference, rtol=0, atol=1e-6)
    for parameter in model.parameters():  # frozen weights must not break it either
        parameter.requires_grad_(False)
    torch.testing.assert_close(wrapped(x)[2], reference, rtol=0, atol=1e-6)


def test_bad_target_layers_are_named():
    model = tiny_backbone("resnet18")
    with pytest.raises(ValueError, match="target_layer 'layer9' is not a module of ResNet.*layer4"):
        ExplainableModel(model, target_layer="layer9")
    with pytest.raises(ValueError, match="no analytic Grad-CAM weights.*'layer3'"):
        ExplainableModel(model, target_layer="layer3", method="analytic")
    with pytest.raises(ValueError, match="method must be"):
        ExplainableModel(model, method="guess")
    inner = ExplainableModel(model, target_layer="layer3")  # an inner layer: autograd, same contract
    logits, features, weights = inner(torch.randn(1, 1, 64, 64))
    assert features.shape == (1, 256, 4, 4) and weights.shape == (1, 256)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_maps_agree_with_monai_gradcam(name):
    from monai.visualize import GradCAM

    model = tiny_backbone(name, num_classes=3)
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        logits, features, weights = ExplainableModel(model)(x)
    target = int(logits[0].argmax())
    x = x[:1]
    features, weights = features[:1], weights[:1]
    cam = GradCAM(model, target_layers=LAYERS[name], postprocessing=lambda m: m)  # MONAI's default inverts
    grid = cam.compute_map(x, class_idx=target)[:, 0]  # ReLU(Σ α A) on the h×w grid, before any normaliser
    ours = torch.relu(torch.einsum("bc,bchw->bhw", weights, features))
    torch.testing.assert_close(ours, grid, rtol=1e-4, atol=1e-6)
    assert grid.max() > 0
    upsampled = cam(x, class_idx=target)[:, 0]  # MONAI's bilinear upsampler, align_corners=False
    torch.testing.assert_close(gradcam_maps(features, weights, (96, 96)), minmax(upsampled), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_maps_agree_with_captum_layer_gradcam(name):
    from captum.attr import LayerAttribution, LayerGradCam

    model = tiny_backbone(name, num_classes=3)
    x = torch.randn(3, 1, 96, 96)
    with torch.no_grad():
        logits, features, weights = ExplainableModel(model)(x)
    target = logits.argmax(1)
    layer = _layer(model, LAYERS[name])
    attribution = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    ours = torch.relu(torch.einsum("bc,bchw->bhw", weights, features))
    torch.testing.assert_close(ours, attribution[:, 0].detach(), rtol=1e-4, atol=1e-6)
    upsampled = LayerAttribution.interpolate(attribution.detach(), (96, 96), interpolate_mode="bilinear")[:, 0]
    expected = F.interpolate(ours[:, None], size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(upsampled, expected, rtol=1e-4, atol=1e-6)
    keep = ours.flatten(1).amax(1) > ours.flatten(1).amin(1)  # constant grids normalise to zeros instead
    torch.testing.assert_close(
        gradcam_maps(features, weights, (96, 96))[keep], minmax(upsampled)[keep], rtol=0, atol=1e-4
    )
