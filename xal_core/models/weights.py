"""Weights from local files into a model: ``.pt`` (``torch.save``, loaded with ``weights_only=True``)
or ``.safetensors``, a bare state dict or an xal checkpoint, never from a hub.

Its own module because both sides need it: ``backbones.build_backbone(weights=...)`` loads weights
into the backbone it builds, and ``checkpoint`` (which builds backbones) loads a checkpoint's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_state", "load_weights", "read_weights"]


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from a local ``.pt``/``.safetensors`` file into ``model`` (never from a hub)."""
    path = Path(path)
    state, _ = read_weights(path)
    load_state(model, state, str(path))
    return model


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The file's state dict and, for an xal checkpoint, its recorded facts (None for a bare state dict)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            return load_file(str(path)), (json.loads(meta["xal"]) if "xal" in meta else None)
        except (SafetensorError, OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: unreadable safetensors file: {error}") from error
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path}: unreadable weights file: {error}") from error
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        facts = {k: v for k, v in data.items() if k != "state_dict"}
        return data["state_dict"], facts
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, None
    raise ValueError(f"{path}: expected a state dict or an xal checkpoint, got {type(data).__name__}")


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)``, or a ``ValueError`` naming ``source`` and what does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        arch = getattr(model, "xal_config", None)
        name = arch.name if arch is not None else type(model).__name__
        details = "; ".join(
            part
            for part in (
                f"{len(missing)} missing keys (e.g. {missing[:3]})" if missing else "",
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})" if unexpected else "",
                f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})" if shapes else "",
            )
            if part
        )
        raise ValueError(f"{source}: weights do not fit the {name} architecture: {details}")
    model.load_state_dict(state)
