"""The scoring contract (docs/contract.md) in plain torch: the API every other part of xal calls.

Its parameters (τ, λ, the uncertainty measure, the missing-ROI policy, the fusion) have their
defaults and checks in ``parameters``; every layer takes them from there.

>>> import torch
>>> from xal_core.scoring import Roi, cam_alignment, uncertainty, dual_score, TopK
>>> torch.manual_seed(0) and None
>>> features, cam_weights = torch.rand(4, 16, 7, 7), torch.rand(4, 16)
>>> roi = Roi.from_masks(torch.rand(4, 64, 64) > 0.7)
>>> alignment = cam_alignment(features, cam_weights, roi)
>>> scores = dual_score(uncertainty(torch.randn(4, 3)), alignment, weight=0.5)
>>> top = TopK(2)
>>> top.push(torch.arange(4), scores.score)
>>> len(top.result().ids)
2
"""

from .alignment import cam_alignment, gradcam_maps
from .fusion import DualScore, dual_score, percentile_ranks
from .inputs import NonFiniteInputWarning
from .parameters import (
    DEFAULT_FUSION,
    DEFAULT_MISSING_ROI,
    DEFAULT_THRESHOLD,
    DEFAULT_UNCERTAINTY,
    DEFAULT_WEIGHT,
    FUSION_METHODS,
    MISSING_ROI_POLICIES,
    ScoringConfig,
)
from .results import AlignmentScores
from .roi import Roi
from .topk import Selection, TopK, rank_order
from .uncertainty import UNCERTAINTY_KINDS, bald, uncertainty

__all__ = [
    "DEFAULT_FUSION",
    "DEFAULT_MISSING_ROI",
    "DEFAULT_THRESHOLD",
    "DEFAULT_UNCERTAINTY",
    "DEFAULT_WEIGHT",
    "FUSION_METHODS",
    "MISSING_ROI_POLICIES",
    "AlignmentScores",
    "DualScore",
    "NonFiniteInputWarning",
    "Roi",
    "ScoringConfig",
    "Selection",
    "TopK",
    "UNCERTAINTY_KINDS",
    "bald",
    "cam_alignment",
    "dual_score",
    "gradcam_maps",
    "percentile_ranks",
    "rank_order",
    "uncertainty",
]
