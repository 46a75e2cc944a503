"""Acquisition strategies: one small class each over the same :class:`ScoreTable` (docs/strategies.md).

>>> import numpy as np
>>> from xal_core.acquisition.strategies import ScoreTable, make_strategy
>>> table = ScoreTable(
...     ids=np.array([10, 11, 12]),
...     probabilities=np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4]]),
...     dice=np.array([0.9, 0.1, np.nan]),  # NaN: this image has no ROI
... )
>>> make_strategy("dual", weight=0.5).select(table, k=2).ids.tolist()
[12, 11]
"""

from .base import Acquisition, Strategy
from .diversity import DIVERSITY_MODES, Diverse
from .dual import MISSING_ROI_POLICIES, DualRank, DualWeighted, Misalignment, NoRoiWarning
from .registry import STRATEGY_NAMES, make_strategy, reads_rois, scoring_params
from .table import ScoreTable
from .uncertainty_sampling import Bald, Entropy, LeastConfidence, Margin, Random

__all__ = [
    "Acquisition",
    "Bald",
    "DIVERSITY_MODES",
    "Diverse",
    "DualRank",
    "DualWeighted",
    "Entropy",
    "LeastConfidence",
    "MISSING_ROI_POLICIES",
    "Margin",
    "Misalignment",
    "NoRoiWarning",
    "Random",
    "STRATEGY_NAMES",
    "ScoreTable",
    "Strategy",
    "make_strategy",
    "reads_rois",
    "scoring_params",
]
