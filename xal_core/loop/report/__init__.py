"""The run report: learning curves, Grad-CAM overlay grid, final table, and ``report.html``.

Figures are drawn on ``matplotlib.figure.Figure`` objects (the Agg canvas), never through
``pyplot``, so the report needs no display and leaves matplotlib's global state alone.
"""

from .curves import CURVE_PANELS, learning_curves_figure, plot_learning_curves
from .final_table import FINAL_COLUMNS, FinalRow, final_table, final_table_html, final_table_markdown
from .html import CURVES_FILE, OVERLAYS_FILE, REPORT_FILE, write_report
from .overlays import (
    OverlayArrays,
    cam_maps,
    load_overlay_arrays,
    load_overlay_dir,
    overlay_grid_figure,
    overlay_path,
    plot_overlay_grid,
    save_overlay_arrays,
    write_overlays,
)
from .stats import CurvePoint, MeanCI, curve_points, final_rounds, mean_ci, t_quantile

__all__ = [
    "CURVES_FILE",
    "CURVE_PANELS",
    "FINAL_COLUMNS",
    "OVERLAYS_FILE",
    "REPORT_FILE",
    "CurvePoint",
    "FinalRow",
    "MeanCI",
    "OverlayArrays",
    "cam_maps",
    "curve_points",
    "final_rounds",
    "final_table",
    "final_table_html",
    "final_table_markdown",
    "learning_curves_figure",
    "load_overlay_arrays",
    "load_overlay_dir",
    "mean_ci",
    "overlay_grid_figure",
    "overlay_path",
    "plot_learning_curves",
    "plot_overlay_grid",
    "save_overlay_arrays",
    "t_quantile",
    "write_overlays",
    "write_report",
]
