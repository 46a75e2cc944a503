"""Synthetic chest-X-ray-like pixel content for the replicas: a body, lungs, and bright findings."""

from __future__ import annotations

import numpy as np

__all__ = ["chest", "paint_boxes"]


def chest(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A float [0, 1] density image: dark lungs inside a brighter body, with mild texture."""
    height, width = shape
    ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    body = (xs / 0.9) ** 2 + (ys / 1.0) ** 2 < 1
    lungs = (((xs - 0.4) / 0.3) ** 2 + (ys / 0.6) ** 2 < 1) | (((xs + 0.4) / 0.3) ** 2 + (ys / 0.6) ** 2 < 1)
    image = 0.1 + 0.4 * body - 0.25 * lungs + 0.03 * rng.standard_normal(shape)
    return np.clip(image, 0, 0.6)


def paint_boxes(image: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> None:
    """Findings are bright (0.9) inside their boxes, so tests can check where boxes land."""
    for x0, y0, x1, y1 in boxes:
        image[int(round(y0)): int(round(y1)), int(round(x0)): int(round(x1))] = 0.9
