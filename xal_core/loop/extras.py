"""The score-table columns only some strategies read: pooled embeddings and MC-dropout passes.

``ScoreTable.embeddings`` (k-center diversity) and ``ScoreTable.mc_probabilities`` (BALD) are not
part of the scoring contract, so neither the service's ranking nor ``score_batch`` produce them.
The loop computes them itself, from the outputs of the same exported model that scored the pool,
and only for an arm whose strategy reads them (they cost ``N × C'`` and ``T × N × K`` floats):

* **embeddings** ``[N, C']``: the spatial mean of the model's ``features [N, C', h, w]`` — exactly
  the vector its linear head reads (``logits = W · e + b``), so "far apart" means far apart in the
  space the classifier decides in.
* **MC passes** ``[T, N, K]``: *last-layer* MC dropout. The exported graph has no dropout (and the
  model was trained without any), so each pass applies inverted dropout with probability ``p`` to
  the pooled embedding only, ``logits_t = b + W (m_t ⊙ e) / (1 − p)``, ``m_t ~ Bernoulli(1 − p)``,
  then a softmax. This is an approximation of BALD (Gal et al. 2017 train *with* dropout and
  sample it everywhere): it measures how much the head's decision depends on which features
  survive, which is cheap (one small matmul per pass on features the forward pass already gave),
  but it is not the posterior of a network trained as a Bayesian one.

The masks of an item depend on ``(seed, item id)`` alone, with ``seed`` derived from the arm's seed
and the acquisition round: a rerun draws the same masks (the same acquisition), whichever scorer
ran, however the pool is chunked and whichever items are excluded, and each round draws new ones.

``W`` and ``b`` are handed to the scorer by the learner, which holds the round's checkpoint,
rather than read back out of the exported file: an ONNX or TorchScript graph does not name its
head's parameters in a way that survives the exporters (initialiser names differ between the
dynamo and legacy ONNX exporters and TorchScript), whereas the checkpoint's ``nn.Linear`` is the
source the file was exported from. Every chunk checks that ``W e + b`` reproduces the file's logits,
so a head from another model is an error, never a silent BALD of the wrong model.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xal_core.acquisition.strategies import ScoreTable, make_strategy, scoring_params

from .seeds import derived_seed

if TYPE_CHECKING:
    from torch import nn

    from .protocol import Protocol

__all__ = ["ExtrasCollector", "McDropout", "TableExtras", "check_drop_probability", "check_runnable", "extras_for",
           "needed_columns", "pooled_features"]

# |W e + b − logits| allowed, relative to 1 + |logits| (float32 graph vs float64 here).
_HEAD_TOLERANCE = 1e-3


def pooled_features(features: Any) -> np.ndarray:
    """float64 ``[B, C']``: the mean of ``features [B, C', h, w]`` over ``h, w`` (the head's input)."""
    if hasattr(features, "detach"):
        features = features.detach().cpu().double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 4:
        raise ValueError(f"features: expected shape [B, C, h, w], got {array.shape}")
    return array.mean(axis=(2, 3))


def check_drop_probability(p: Any) -> float:
    """The MC-dropout probability as a float; ``ValueError`` unless ``0 <= p < 1``."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"mc_dropout: expected a drop probability in [0, 1), got {p!r}")
    return float(p)


@dataclass(frozen=True, eq=False)
class McDropout:
    """Last-layer MC dropout: ``passes`` draws of inverted dropout ``p`` on the pooled embedding.

    ``passes`` and ``p`` have no defaults here: the run's settings are ``Protocol.mc_passes`` and
    ``Protocol.mc_dropout``, and every McDropout is built from them (``extras_for``).

    Attributes:
        weight: float64 ``[K, C']``, the linear head's ``W``.
        bias: float64 ``[K]``, its ``b``.
        passes: ``T >= 1``.
        p: the drop probability, ``0 <= p < 1`` (``p = 0``: every pass is the model's prediction).
        seed: with the item id, seeds an item's masks.
    """

    weight: np.ndarray
    bias: np.ndarray
    passes: int
    p: float
    seed: int = 0

    def __post_init__(self) -> None:
        weight = np.asarray(self.weight, dtype=np.float64)
        bias = np.asarray(self.bias, dtype=np.float64)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(f"McDropout: expected weight [K, C] and bias [K], got {weight.shape} and {bias.shape}")
        if isinstance(self.passes, bool) or int(self.passes) != self.passes or self.passes < 1:
            raise ValueError(f"mc_passes: expected an integer >= 1, got {self.passes!r}")
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "passes", int(self.passes))
        object.__setattr__(self, "p", check_drop_probability(self.p))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, passes: int, p: float, seed: int) -> McDropout:
        """From the model's head (``ExplainableModel(...).linear``)."""
        weight = linear.weight.detach().cpu().double().numpy().copy()
        bias = (linear.bias.detach().cpu().double().numpy().copy() if linear.bias is not None
                else np.zeros(weight.shape[0]))
        return cls(weight, bias, passes=passes, p=p, seed=seed)

    def masks(self, item: int) -> np.ndarray:
        """bool ``[T, C']``: which features survive in each pass, for this item (True = kept)."""
        rng = np.random.default_rng([int(self.seed), int(item)])
        return rng.random((self.passes, self.weight.shape[1]), dtype=np.float32) >= self.p

    def probabilities(self, ids: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """float64 ``[T, B, K]``: the softmax of each pass, for items ``ids [B]`` with ``embeddings [B, C']``."""
        ids = np.asarray(ids, dtype=np.int64)
        if embeddings.shape != (ids.size, self.weight.shape[1]):
            raise ValueError(f"McDropout: embeddings {embeddings.shape} for {ids.size} items and a head of "
                             f"{self.weight.shape[1]} features")
        logits = np.empty((self.passes, ids.size, self.weight.shape[0]))
        scale = 1.0 / (1.0 - self.p)
        with np.errstate(invalid="ignore", over="ignore"):  # a NaN item (invalid) stays NaN
            for row, item in enumerate(ids.tolist()):
                logits[:, row] = (self.masks(item) * (embeddings[row] * scale)) @ self.weight.T + self.bias
            logits -= logits.max(axis=2, keepdims=True)
            exp = np.exp(logits)
            return exp / exp.sum(axis=2, keepdims=True)

    def check_head(self, embeddings: np.ndarray, logits: np.ndarray) -> None:
        """``ValueError`` unless ``W e + b`` gives the model's ``logits`` (finite rows)."""
        expected = embeddings @ self.weight.T + self.bias
        finite = np.isfinite(logits).all(axis=1) & np.isfinite(expected).all(axis=1)
        gap = np.abs(expected[finite] - logits[finite]) / (1.0 + np.abs(logits[finite]))
        if gap.size and float(gap.max()) > _HEAD_TOLERANCE:
            raise ValueError(f"MC dropout: the head's W, b do not reproduce the model's logits (relative gap "
                             f"{float(gap.max()):.3g}): pass the linear head of the model that was exported")


@dataclass(frozen=True, eq=False)
class TableExtras:
    """What a scorer adds to its table beyond the scoring contract (nothing by default)."""

    embeddings: bool = False
    mc_dropout: McDropout | None = None

    def __bool__(self) -> bool:
        return self.embeddings or self.mc_dropout is not None


class ExtrasCollector:
    """Gathers the extra columns chunk by chunk, from each chunk's model outputs."""

    def __init__(self, request: TableExtras) -> None:
        self.request = request
        self._ids: list[np.ndarray] = []
        self._embeddings: list[np.ndarray] = []
        self._mc: list[np.ndarray] = []

    def add(self, ids: Any, logits: Any, features: Any, keep: Any) -> None:
        """One chunk: item ids ``[b]``, the model's ``logits [b, K]`` and ``features [b, C', h, w]``;
        only rows where ``keep [b]`` is True are kept (the unlabeled ones)."""
        keep = _numpy(keep).astype(bool)
        ids = _numpy(ids).astype(np.int64)[keep]
        embeddings = pooled_features(features)[keep]
        self._ids.append(ids)
        if self.request.embeddings:
            self._embeddings.append(embeddings)
        mc = self.request.mc_dropout
        if mc is not None:
            mc.check_head(embeddings, _numpy(logits).astype(np.float64)[keep])
            self._mc.append(mc.probabilities(ids, embeddings))

    def columns(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """``{"embeddings": [N, C'], "mc_probabilities": [T, N, K]}`` (those requested), rows in the
        order of ``ids``, which must be exactly the items added."""
        got = np.concatenate(self._ids) if self._ids else np.zeros(0, dtype=np.int64)
        wanted = np.asarray(ids, dtype=np.int64)
        order = np.argsort(got, kind="stable")
        position = order[np.minimum(np.searchsorted(got[order], wanted), got.size - 1)] if got.size else order
        if got.size != wanted.size or not np.array_equal(got[position], wanted):
            raise RuntimeError(f"extra columns: computed for {got.size} items, the table has {wanted.size} others")
        out: dict[str, np.ndarray] = {}
        if self.request.embeddings:
            out["embeddings"] = np.concatenate(self._embeddings)[position] if self._embeddings else np.zeros((0, 1))
        mc = self.request.mc_dropout
        if mc is not None:
            passes = (np.concatenate(self._mc, axis=1) if self._mc
                      else np.zeros((mc.passes, 0, mc.weight.shape[0])))
            out["mc_probabilities"] = passes[:, position]
        return out


def needed_columns(protocol: Protocol, strategy: str) -> tuple[bool, bool]:
    """``(embeddings, mc_probabilities)``: what the arm of ``strategy`` reads beyond the contract."""
    params = protocol.strategy_params(strategy)
    uncertainty = scoring_params(strategy, params["scoring"]).get("uncertainty")
    return params.get("diversity") == "kcenter", strategy == "bald" or uncertainty == "bald"


def extras_for(protocol: Protocol, strategy: str, seed: int, round: int, linear: nn.Linear) -> TableExtras:
    """The extras an arm's acquisition at ``round`` needs (``TableExtras()`` when none).

    ``linear`` is the round model's head; the masks are seeded by ``(seed, round)``.
    """
    embeddings, mc = needed_columns(protocol, strategy)
    dropout = (McDropout.from_linear(linear, passes=protocol.mc_passes, p=protocol.mc_dropout,
                                     seed=derived_seed("mc-dropout", seed, round)) if mc else None)
    return TableExtras(embeddings=embeddings, mc_dropout=dropout)


def check_runnable(protocol: Protocol, supplied: Callable[[Protocol, str], tuple[bool, bool]] = needed_columns) -> None:
    """Refuse at start what the loop could not run at its first acquisition.

    Each strategy, without and then with its diversity mode, selects from a small made-up table
    holding exactly the columns the loop supplies to it (``supplied``, i.e. ``needed_columns``): a
    strategy that reads anything else fails here, naming the option, instead of after a round of
    training. (Today the loop supplies everything every strategy reads; this keeps it so when a
    strategy or a mode that reads a new column is added.)
    """
    for name in protocol.strategies:
        params = protocol.strategy_params(name)
        diversity = params.pop("diversity", None)
        table = _probe_table(*supplied(protocol, name))
        attempts = [(f"--strategies {name}", params, None)]
        if diversity is not None:
            attempts.append((f"--diversity {diversity} (with --strategies {name})", params, diversity))
        for option, kwargs, mode in attempts:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    make_strategy(name, diversity=mode, **kwargs).select(table, 2, np.random.default_rng(0))
            except ValueError as error:
                raise ValueError(f"{option}: the loop cannot supply what it needs ({error})") from None


def _probe_table(embeddings: bool, mc: bool) -> ScoreTable:
    rng = np.random.default_rng(0)
    n, classes = 6, 2
    probabilities = rng.dirichlet(np.ones(classes), size=n)
    return ScoreTable(ids=np.arange(n), probabilities=probabilities, dice=np.array([0.1, 0.5, 0.9, 0.3, np.nan, 0.7]),
                      soft_dice=np.full(n, 0.5), invalid=np.zeros(n, dtype=bool),
                      mc_probabilities=rng.dirichlet(np.ones(classes), size=(2, n)) if mc else None,
                      embeddings=rng.normal(size=(n, 3)) if embeddings else None)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)
