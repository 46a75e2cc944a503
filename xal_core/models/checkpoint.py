"""Checkpoints: weights plus what is needed to rebuild and use the model, from local paths only.

A checkpoint records the architecture (``BackboneConfig``), the class names, the preprocessing and
the training configuration, so that ``xal export`` and the service need nothing else. Two formats:

* ``.pt``: ``torch.save`` of a dict (loaded with ``weights_only=True``: no pickled code runs);
* ``.safetensors``: the weights, with the rest as JSON in the file's string metadata.

``load_weights`` also accepts a bare state dict. A file for another architecture fails with a
``ValueError`` that names the file and the mismatching keys or shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .backbones import BackboneConfig, build_backbone
from .metadata import Preprocessing

FORMAT_TAG = "xal-checkpoint-1"


@dataclass
class Checkpoint:
    """A trained model's weights and the facts about it."""

    architecture: BackboneConfig
    state_dict: dict[str, torch.Tensor]
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    config: dict = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The backbone with these weights, in eval mode."""
        model = build_backbone(self.architecture)
        _load_state(model, self.state_dict, "checkpoint")
        return model.eval()


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    facts = {
        "format": FORMAT_TAG,
        "architecture": checkpoint.architecture.to_dict(),
        "class_names": list(checkpoint.class_names),
        "preprocessing": checkpoint.preprocessing.to_dict(),
        "config": checkpoint.config,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in checkpoint.state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"xal": json.dumps(facts)})
    else:
        torch.save({**facts, "state_dict": state}, path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a file without the xal facts is an error."""
    path = Path(path)
    state, facts = _read(path)
    if facts is None or facts.get("format") != FORMAT_TAG:
        raise ValueError(f"{path}: not an xal checkpoint (no architecture/class names/preprocessing recorded)")
    try:
        return Checkpoint(
            architecture=BackboneConfig.from_dict(facts["architecture"]),
            state_dict=state,
            class_names=tuple(facts["class_names"]),
            preprocessing=Preprocessing.from_dict(facts["preprocessing"]),
            config=dict(facts.get("config", {})),
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: incomplete xal checkpoint: {error}") from error


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from a local ``.pt``/``.safetensors`` file into ``model`` (never from a hub)."""
    path = Path(path)
    state, _ = _read(path)
    _load_state(model, state, str(path))
    return model


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
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


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
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
