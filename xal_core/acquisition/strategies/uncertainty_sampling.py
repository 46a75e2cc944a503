"""Baselines that ignore the explanations: random sampling and uncertainty sampling."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Strategy, require_rng
from .measures import uncertainty_column
from .registry import register_strategy
from .table import ScoreTable

__all__ = ["Bald", "Entropy", "LeastConfidence", "Margin", "Random"]


@register_strategy
class Random(Strategy):
    """Uniform sampling without replacement among the selectable items: the baseline of every study.

    The draw is over the selectable items sorted by id, so the same seed and the same pool give
    the same acquisition whatever the row order of the table. Scores are 0.

    References:
        Settles, *Active Learning Literature Survey*, 2009, §1 (passive learning baseline):
        https://burrsettles.com/pub/settles.activelearning.pdf
    """

    name: ClassVar[str] = "random"

    def _score(self, table: ScoreTable) -> np.ndarray:
        return np.zeros(len(table))

    def _order(self, table: ScoreTable, scores: np.ndarray, k: int, rng: np.random.Generator | None) -> np.ndarray:
        generator = require_rng(rng, self.name)
        selectable = np.flatnonzero(scores > -np.inf)
        selectable = selectable[np.argsort(table.ids[selectable], kind="stable")]
        return selectable[generator.choice(selectable.size, size=min(k, selectable.size), replace=False)]


class _UncertaintySampling(Strategy):
    """Scores each item by one uncertainty measure of ``xal_core.scoring`` (each in [0, 1])."""

    measure: ClassVar[str]

    def _score(self, table: ScoreTable) -> np.ndarray:
        return uncertainty_column(table, self.measure)


@register_strategy
class Entropy(_UncertaintySampling):
    """Predictive entropy ``−Σ p log p / log K``: the most uncertain over all classes first.

    References:
        Shannon, 1948; as an acquisition function: Settles, *Active Learning Literature Survey*,
        2009, §3.1: https://burrsettles.com/pub/settles.activelearning.pdf
    """

    name: ClassVar[str] = "entropy"
    measure: ClassVar[str] = "entropy"


@register_strategy
class Margin(_UncertaintySampling):
    """Margin ``1 − (p₁ − p₂)``: the items closest to the decision boundary of their top two classes.

    References:
        Scheffer, Decomain and Wrobel, *Active Hidden Markov Models for Information Extraction*,
        IDA 2001: https://doi.org/10.1007/3-540-44816-0_31
    """

    name: ClassVar[str] = "margin"
    measure: ClassVar[str] = "margin"


@register_strategy
class LeastConfidence(_UncertaintySampling):
    """Least confidence ``(1 − p₁)·K/(K − 1)``: the items whose best class is least probable.

    References:
        Lewis and Gale, *A Sequential Algorithm for Training Text Classifiers*, SIGIR 1994:
        https://arxiv.org/abs/cmp-lg/9407020
    """

    name: ClassVar[str] = "least_confidence"
    measure: ClassVar[str] = "least_confidence"


@register_strategy
class Bald(_UncertaintySampling):
    """BALD: mutual information between the prediction and the weights, from ``T`` MC-dropout passes.

    ``I = H(mean_t p_t) − mean_t H(p_t)``, divided by ``log K``. High when the passes are each
    confident but disagree (epistemic uncertainty), low when they agree, even on a uniform
    prediction (aleatoric noise). Needs ``table.mc_probabilities`` (``ValueError`` otherwise).

    References:
        Houlsby et al., *Bayesian Active Learning for Classification and Preference Learning*, 2011:
        https://arxiv.org/abs/1112.5745; Gal, Islam and Ghahramani, *Deep Bayesian Active Learning
        with Image Data*, ICML 2017: https://arxiv.org/abs/1703.02910
    """

    name: ClassVar[str] = "bald"
    measure: ClassVar[str] = "bald"
