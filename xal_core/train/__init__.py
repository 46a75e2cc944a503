"""Training: ``fit`` a backbone on images and integer labels, and write an xal checkpoint.

>>> import torch
>>> from xal_core.models import build_backbone
>>> from xal_core.train import Augment, TrainConfig, fit
>>> torch.manual_seed(0) and None
>>> images, labels = torch.rand(12, 1, 32, 32), torch.arange(12) % 2
>>> result = fit(build_backbone("resnet18", 1, 2), images, labels,
...              config=TrainConfig(epochs=1, batch_size=4), progress=False)
>>> result.checkpoint.preprocessing.input_size
(32, 32)
"""

from .augment import Augment
from .config import TrainConfig
from .data import DataSummary, class_weights
from .fit import FitResult, fit

__all__ = ["Augment", "DataSummary", "FitResult", "TrainConfig", "class_weights", "fit"]
