"""Learning curves: accuracy and CAM–ROI Dice against the number of labels, one line per strategy.

Each line is the mean over seeds at each round (x = the round's labels count, averaged over seeds),
with a shaded 95 % t-interval over seeds (``stats.mean_ci``). A strategy run with one seed has no
band; its legend entry says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from matplotlib.figure import Figure

from .stats import curve_points, strategies

__all__ = ["CURVE_PANELS", "learning_curves_figure", "plot_learning_curves"]

CURVE_PANELS = (("accuracy", "Accuracy"), ("cam_dice", "CAM–ROI Dice"))


def learning_curves_figure(rows: Iterable[Mapping[str, object]],
                           panels: tuple[tuple[str, str], ...] = CURVE_PANELS) -> Figure:
    """A figure with one panel per ``(metric, title)`` of ``panels``, drawn from ``metrics.csv`` rows."""
    rows = list(rows)
    if not rows:
        raise ValueError("learning curves: no metrics rows")
    names = strategies(rows)
    figure = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(names))]
    for ax, (metric, title) in zip(axes, panels, strict=True):
        points = curve_points(rows, metric)
        for name, colour in zip(names, colours, strict=True):
            curve = points[name]
            xs = [p.labels for p in curve]
            means = [p.value.mean for p in curve]
            seeds = max(p.value.n for p in curve)
            label = f"{name} ({seeds} seeds)" if seeds > 1 else f"{name} (1 seed, no CI band)"
            ax.plot(xs, means, marker="o", markersize=3.5, color=colour, label=label)
            if seeds > 1:
                lows = [p.value.low if math.isfinite(p.value.half_width) else math.nan for p in curve]
                highs = [p.value.high if math.isfinite(p.value.half_width) else math.nan for p in curve]
                ax.fill_between(xs, lows, highs, color=colour, alpha=0.18, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("labels")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small", loc="best")
    figure.suptitle("Mean over seeds; band = 95% t-interval over seeds", fontsize="medium")
    return figure


def plot_learning_curves(rows: Iterable[Mapping[str, object]], path: str | Path,
                         panels: tuple[tuple[str, str], ...] = CURVE_PANELS, *, dpi: int = 110) -> Path:
    """Write the learning curves as a PNG at ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    learning_curves_figure(rows, panels).savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path
