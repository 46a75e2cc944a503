"""Checkpoints: weights plus what is needed to rebuild and use the model, from local paths only.

A checkpoint records the architecture (``BackboneConfig``), the class names, the preprocessing and
the training configuration, so that ``xal export`` and the service need nothing else. Two formats:

* ``.pt``: ``torch.save`` of a dict (loaded with ``weights_only=True``: no pickled code runs);
* ``.safetensors``: the weights, with the rest as JSON in the file's string metadata.

Reading the files and fitting weights to a model is ``weights.py``'s (``load_weights`` also takes a
bare state dict). A file for another architecture fails with a ``ValueError`` that names the file
and the mismatching keys or shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .backbones import BackboneConfig, build_backbone
from .metadata import ModelMetadata, Preprocessing
from .weights import load_state, read_weights

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
        load_state(model, self.state_dict, "checkpoint")
        return model.eval()

    def metadata(self, target_layer: str) -> ModelMetadata:
        """What a file exported from this checkpoint carries (``export(..., metadata=...)``), its
        Grad-CAM read at ``target_layer`` (``ExplainableModel(self.build()).target_layer``)."""
        return ModelMetadata(class_names=self.class_names, preprocessing=self.preprocessing,
                             target_layer=target_layer, architecture=self.architecture.to_dict())


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
    state, facts = read_weights(path)
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
