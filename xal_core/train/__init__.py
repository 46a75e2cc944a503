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
from .config import SCHEDULES, TrainConfig
from .data import DataSummary, class_weights
from .fit import FitResult, fit
from .roi_loss import roi_cam_loss
from .roi_swap import dilate, roi_swap
from .roi_training import ROI_AUGMENTS, ROI_LOSSES, SWAP_SOURCES, RoiTraining

__all__ = [
    "ROI_AUGMENTS",
    "ROI_LOSSES",
    "SCHEDULES",
    "SWAP_SOURCES",
    "Augment",
    "DataSummary",
    "FitResult",
    "RoiTraining",
    "TrainConfig",
    "class_weights",
    "dilate",
    "fit",
    "roi_cam_loss",
    "roi_swap",
]
