"""The final-round table: per strategy, each metric's mean ± 95 % t-interval over seeds.

"Final round" is each strategy's last round in ``metrics.csv`` (the final labels count). A cell
reads ``mean ± half-width``; with one seed just the mean; ``n/a`` when the metric is undefined for
every seed; ``(n=k)`` when it is undefined (NaN) for some seeds and the others make the mean.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .stats import MeanCI, final_rounds, mean_ci

__all__ = ["FINAL_COLUMNS", "FinalRow", "final_table", "final_table_html", "final_table_markdown"]

FINAL_COLUMNS = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced acc."),
    ("macro_f1", "Macro-F1"),
    ("auroc", "AUROC"),
    ("cam_dice", "CAM Dice"),
    ("cam_soft_dice", "Soft Dice"),
    ("cam_energy", "ROI energy"),
)


@dataclass(frozen=True)
class FinalRow:
    """One strategy at its final round."""

    strategy: str
    round: int
    labels: float
    seeds: int
    values: dict[str, MeanCI]


def final_table(rows: Iterable[Mapping[str, object]], confidence: float = 0.95) -> list[FinalRow]:
    """One ``FinalRow`` per strategy (order of first appearance in ``rows``)."""
    table = []
    for strategy, members in final_rounds(rows).items():
        table.append(FinalRow(
            strategy=strategy,
            round=int(members[0]["round"]),
            labels=math.fsum(float(r["labels"]) for r in members) / len(members),
            seeds=len(members),
            values={m: mean_ci((float(r[m]) for r in members), confidence) for m, _ in FINAL_COLUMNS},
        ))
    return table


def _cell(value: MeanCI, seeds: int, digits: int) -> str:
    if value.n == 0:
        return "n/a"
    text = f"{value.mean:.{digits}f}"
    if value.n > 1:
        text += f" ± {value.half_width:.{digits}f}"
    if value.n < seeds:
        text += f" (n={value.n})"
    return text


def _labels(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _header() -> list[str]:
    return ["Strategy", "Labels", "Seeds", *(title for _, title in FINAL_COLUMNS)]


def _cells(row: FinalRow, digits: int) -> list[str]:
    return [row.strategy, _labels(row.labels), str(row.seeds),
            *(_cell(row.values[m], row.seeds, digits) for m, _ in FINAL_COLUMNS)]


def final_table_markdown(rows: Iterable[Mapping[str, object]], *, digits: int = 3) -> str:
    """The final table as a GitHub Markdown table (``\\ | < > &`` in strategy names backslash-escaped)."""
    table = final_table(rows)
    lines = ["| " + " | ".join(_header()) + " |", "|" + "---|" * len(_header())]
    for row in table:
        cells = [re.sub(r"([\\|<>&])", r"\\\1", c) for c in _cells(row, digits)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def final_table_html(rows: Iterable[Mapping[str, object]], *, digits: int = 3) -> str:
    """The final table as an HTML ``<table>`` (every string escaped)."""
    table = final_table(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _header())
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row, digits)) + "</tr>\n" for row in table
    )
    return f'<table class="final">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n'
