"""What the studies' analyses share: the area under a learning curve, mean ± CI cells, and the plot.

``analyse_study.py`` (the issue-14 study) and ``analyse_study_cxr.py`` (the cxr-sim study) read
different arm folders and compare different arms, but summarise a curve, print an interval and
draw the curves the same way; this is the one home of those three.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

from xal_core.loop.report.stats import MeanCI

__all__ = ["aulc", "fmt", "plot_curves", "summary"]


def aulc(curve: Mapping[int, Mapping[str, float]], metric: str, first: int, last: int) -> float:
    """Mean height of ``metric``'s curve over ``[first, last]`` labels: trapezoids over the label
    counts measured in that range, divided by its width."""
    labels = sorted(n for n in curve if first <= n <= last)
    area = sum((b - a) * (curve[a][metric] + curve[b][metric]) / 2 for a, b in zip(labels, labels[1:], strict=False))
    return area / (last - first)


def summary(ci: MeanCI) -> dict:
    """A ``MeanCI`` as the JSON the analyses write (``fmt`` reads it back)."""
    return {"mean": ci.mean, "half_width": ci.half_width, "n": ci.n}


def fmt(d: Mapping[str, float], digits: int = 3) -> str:
    """A table cell: ``mean ± half-width``; the mean alone for one seed; ``—`` for none."""
    if d["n"] == 0:
        return "—"
    if math.isnan(d["half_width"]):
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} ± {d['half_width']:.{digits}f}"


def plot_curves(arms: Mapping[str, dict], metrics: tuple[str, str], titles: tuple[str, str], path: Path, *,
                style: Callable[[str], str], legend_columns: int = 1) -> None:
    """Two panels (one per metric) of every arm's mean curve with its 95 % band, from the
    ``curve`` entries of an analysis (``{labels: {metric: summary}}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm, entry in arms.items():
        labels = sorted(entry["curve"], key=int)
        x = [int(n) for n in labels]
        for ax, metric in zip(axes, metrics, strict=True):
            mean = [entry["curve"][n][metric]["mean"] for n in labels]
            half = [0.0 if math.isnan(h := entry["curve"][n][metric]["half_width"]) else h for n in labels]
            line, = ax.plot(x, mean, style(arm), label=arm)
            ax.fill_between(x, [m - h for m, h in zip(mean, half, strict=True)],
                            [m + h for m, h in zip(mean, half, strict=True)], alpha=0.12, color=line.get_color())
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("labels")
        ax.set_title(f"{title} (mean ± 95 % CI over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=legend_columns)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
