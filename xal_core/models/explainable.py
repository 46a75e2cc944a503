"""``ExplainableModel``: logits, target-layer features and Grad-CAM weights from one forward pass.

The scoring service needs, per image, ``(logits [B,K], features [B,C,h,w], cam_weights [B,C])``
(docs/contract.md) from an exported model, where there is no autograd. Two paths give that contract:

* **analytic** (default for GAP + linear heads): ``α = W[c, :] / (h·w)`` for the target class ``c``;
  pure tensor ops, so it exports to ONNX and TorchScript;
* **autograd** (any other head, or a user-chosen inner layer): a forward hook keeps the layer's
  activations and ``torch.autograd.grad`` gives ``α_k = mean_{i,j} ∂z_c/∂A_k[i,j]``. It runs in eager
  torch only; ``export`` refuses it with a clear error.
"""

from __future__ import annotations

import torch
from torch import nn

from .head import split_gap_linear


class ExplainableModel(nn.Module):
    """Wrap a classifier so that ``forward`` returns logits, features and CAM weights.

    Args:
        backbone: a classifier ``x [B,C_in,H,W] → logits [B,K]``.
        target_layer: dotted name of the layer whose output is the Grad-CAM feature map. ``None``
            picks the layer before the GAP + linear head of a known backbone (analytic path); any
            other name uses the autograd path.
            The analytic path registers the trunk and head, which share the backbone's parameters,
            so this wrapper's ``state_dict`` repeats them; checkpoints store the backbone's.
        method: ``"auto"`` (analytic where possible), ``"analytic"`` (an error where impossible) or
            ``"autograd"`` (always differentiate; the reference the analytic path is tested against).
    """

    def __init__(self, backbone: nn.Module, target_layer: str | None = None, *, method: str = "auto") -> None:
        super().__init__()
        if method not in ("auto", "analytic", "autograd"):
            raise ValueError(f"ExplainableModel: method must be 'auto', 'analytic' or 'autograd', got {method!r}")
        self.backbone = backbone
        split = split_gap_linear(backbone)
        if method == "autograd" and target_layer is None and split is not None:
            target_layer = split.target_layer
        analytic_layer = target_layer is None or (split is not None and target_layer == split.target_layer)
        if method == "analytic" and not (analytic_layer and split is not None):
            raise ValueError(
                f"ExplainableModel: no analytic Grad-CAM weights for {type(backbone).__name__} at "
                f"target_layer {target_layer!r}: it needs the layer before a GAP + linear head"
            )
        if method != "autograd" and analytic_layer:
            if split is None:
                raise ValueError(
                    f"ExplainableModel: {type(backbone).__name__} has no recognised GAP + linear head; "
                    "name a target_layer to use the autograd path"
                )
            self.trunk: nn.Module | None = split.trunk
            self.linear: nn.Linear | None = split.linear
            self.target_layer = split.target_layer
            self.analytic = True
        else:
            if target_layer is None:
                raise ValueError(
                    f"ExplainableModel: {type(backbone).__name__} has no recognised GAP + linear head; "
                    "name a target_layer for the autograd path"
                )
            modules = dict(backbone.named_modules())
            if target_layer not in modules:
                children = ", ".join(name for name, _ in backbone.named_children())
                raise ValueError(
                    f"ExplainableModel: target_layer {target_layer!r} is not a module of "
                    f"{type(backbone).__name__} (top-level modules: {children})"
                )
            self.trunk = None
            self.linear = None
            self.target_layer = target_layer
            self.analytic = False

    def forward(self, x: torch.Tensor, target_class: torch.Tensor | None = None):
        """``(logits [B,K], features [B,C,h,w], cam_weights [B,C])`` for ``target_class`` (default argmax)."""
        if self.analytic:
            return self._forward_analytic(x, target_class)
        return self._forward_autograd(x, target_class)

    def _forward_analytic(self, x: torch.Tensor, target_class: torch.Tensor | None):
        features = self.trunk(x)
        logits = self.linear(features.mean(dim=(2, 3)))
        target = logits.argmax(dim=1) if target_class is None else _as_classes(target_class, logits)
        area = features.shape[2] * features.shape[3]
        cam_weights = self.linear.weight.index_select(0, target) / area
        return logits, features, cam_weights.to(features.dtype)

    def _forward_autograd(self, x: torch.Tensor, target_class: torch.Tensor | None):
        captured: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"ExplainableModel: target_layer {self.target_layer!r} does not return a tensor")
            if not output.requires_grad:  # frozen weights or an inference context: make it a leaf we can differentiate
                output = output.detach().requires_grad_(True)
            captured.append(output)
            return output

        handle = self.backbone.get_submodule(self.target_layer).register_forward_hook(keep)
        try:
            with torch.enable_grad():
                logits = self.backbone(x)
                if not captured:
                    raise ValueError(f"ExplainableModel: target_layer {self.target_layer!r} was not called in forward")
                features = captured[-1]
                if features.dim() != 4:
                    raise ValueError(
                        f"ExplainableModel: target_layer {self.target_layer!r} gives shape {tuple(features.shape)}, "
                        "expected [B, C, h, w]"
                    )
                target = logits.argmax(dim=1) if target_class is None else _as_classes(target_class, logits)
                chosen = logits.gather(1, target[:, None]).sum()
                (gradient,) = torch.autograd.grad(chosen, features)
        finally:
            handle.remove()
        return logits.detach(), features.detach(), gradient.mean(dim=(2, 3))


def _as_classes(target_class: torch.Tensor | int, logits: torch.Tensor) -> torch.Tensor:
    target = torch.as_tensor(target_class, dtype=torch.long, device=logits.device).reshape(-1)
    if target.numel() == 1:
        target = target.expand(logits.shape[0])
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target_class: expected one class or {logits.shape[0]}, got {target.shape[0]}")
    if bool(((target < 0) | (target >= logits.shape[1])).any()):
        raise ValueError(f"target_class: classes must lie in [0, {logits.shape[1]}), got {target.tolist()}")
    return target
