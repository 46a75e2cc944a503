"""Mean and 95 % confidence interval over seeds, and the per-round summaries the report draws.

The interval is the Student t-interval ``mean ± t_{(1+c)/2, n−1} · s / √n`` with ``s`` the sample
standard deviation (``ddof = 1``) of the ``n`` seeds. NaN values (a metric undefined for that seed,
e.g. AUROC on a one-class test split) are left out and ``n`` counts the rest; with ``n = 1`` there is
no interval (half-width NaN), with ``n = 0`` no mean either. The t quantile is computed here, from the
regularised incomplete beta function, so the report needs no SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["CurvePoint", "MeanCI", "curve_points", "final_rounds", "mean_ci", "series", "series_name", "strategies", "t_quantile"]


@dataclass(frozen=True)
class MeanCI:
    """``mean ± half_width`` over ``n`` finite values (``half_width`` NaN when ``n < 2``)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


@dataclass(frozen=True)
class CurvePoint:
    """One strategy's metric at one round: the labels count (mean over seeds) and ``MeanCI``."""

    round: int
    labels: float
    value: MeanCI


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> MeanCI:
    """Mean and t-interval half-width of the finite ``values`` (see the module docstring)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence}")
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0)
    mean = math.fsum(finite) / n
    if n == 1:
        return MeanCI(mean, math.nan, 1)
    variance = math.fsum((v - mean) ** 2 for v in finite) / (n - 1)
    return MeanCI(mean, t_quantile((1.0 + confidence) / 2.0, n - 1) * math.sqrt(variance / n), n)


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df > 0`` degrees of freedom."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile: expected 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) * math.sqrt(2.0 / (4 * p * (1 - p)))
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        if _t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-14 * high:
            break
    return (low + high) / 2


def _t_cdf(t: float, df: float) -> float:
    """P(T <= t) for ``t >= 0``."""
    return 1.0 - 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` (continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    guard = lambda v: tiny if abs(v) < tiny else v  # noqa: E731
    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    fraction = d
    for m in range(1, 500):
        even = m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m))
        d = 1.0 / guard(1.0 + even * d)
        c = guard(1.0 + even / c)
        fraction *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))
        d = 1.0 / guard(1.0 + odd * d)
        c = guard(1.0 + odd / c)
        step = d * c
        fraction *= step
        if abs(step - 1.0) < 1e-16:
            break
    return fraction


# ---------------------------------------------------------------------------------- rows → summaries
def series_name(strategy: str, training: str = "") -> str:
    """A strategy's name with its training when that is not the default: ``dual``, ``dual+swap``."""
    return f"{strategy}+{training}" if training else strategy


def series(row: Mapping[str, object]) -> str:
    """The line a ``metrics.csv`` row belongs to (``series_name`` of its strategy and training)."""
    return series_name(str(row["strategy"]), str(row.get("training") or ""))


def strategies(rows: Iterable[Mapping[str, object]]) -> list[str]:
    """Strategy names (``series``: with a non-default training) in order of first appearance."""
    return list(dict.fromkeys(series(row) for row in rows))


def curve_points(rows: Iterable[Mapping[str, object]], metric: str,
                 confidence: float = 0.95) -> dict[str, list[CurvePoint]]:
    """Per strategy, per round (ascending): the mean labels count and the metric's ``MeanCI`` over seeds."""
    groups: dict[str, dict[int, list[Mapping[str, object]]]] = {}
    for row in rows:
        groups.setdefault(series(row), {}).setdefault(int(row["round"]), []).append(row)
    return {
        strategy: [
            CurvePoint(round_index, math.fsum(float(r["labels"]) for r in members) / len(members),
                       mean_ci((float(r[metric]) for r in members), confidence))
            for round_index, members in sorted(by_round.items())
        ]
        for strategy, by_round in groups.items()
    }


def final_rounds(rows: Iterable[Mapping[str, object]]) -> dict[str, list[Mapping[str, object]]]:
    """Per strategy, the rows (one per seed) of its last round."""
    last: dict[str, int] = {}
    rows = list(rows)
    for row in rows:
        strategy = series(row)
        last[strategy] = max(last.get(strategy, int(row["round"])), int(row["round"]))
    return {s: [r for r in rows if series(r) == s and int(r["round"]) == last[s]] for s in last}
