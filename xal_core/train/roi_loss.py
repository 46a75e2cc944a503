"""CAM–ROI loss terms, computed in the forward pass from the analytic Grad-CAM (no second backward).

For a GAP + linear head ``z = W · mean_{ij} A[:, i, j] + b`` the Grad-CAM of class ``k`` is, up to
the positive factor ``1/(h·w)``, ``M_k = Σ_c W[k, c] · A_c`` on the feature grid; both terms below
are invariant to that factor, so they use ``M`` straight from the trunk's features and the head's
weights. The loss's gradient reaches the backbone through ``A`` and the head through ``W``.

**Where the ROI meets the CAM: on the feature grid.** The ROI mask ``[H, W]`` is reduced to the
``h×w`` grid by area averaging, each cell holding the share of its pixels inside the ROI. The CAM
carries no information finer than its grid (upsampling it is an interpolation), the area share keeps
a small lesion's weight whole even inside one cell, and it costs ``h·w`` values per item instead of
``H·W`` per class. (The evaluation's Dice upsamples the CAM to the ROI frame, as the scoring
contract does; the two agree on which cells the evidence lies in.)

Two terms, per item, each in ``[0, 1]``:

* ``dice``: ``1 − softDice(ĉ, r)``, with ``ĉ`` the true class's ReLU'd map min-max normalised to
  ``[0, 1]`` (what Grad-CAM shows) and ``r`` the grid ROI; ``softDice = 2 Σ ĉ r / (Σ ĉ + Σ r)``.
  The paper's term (arXiv 2509.08007). It moves where the CAM of the true class lights up.
* ``outside``: the share of the *class-discriminating* evidence that lies outside the ROI,
  ``Σ_cells (1 − r) · m / Σ_cells m`` with ``m = Σ_k |M_k − mean_j M_j|``. All classes, centred,
  absolute values, because: logits decide only through their differences (softmax ignores what
  all classes share), so evidence added equally to every class decides nothing and must not count
  — a plain share of ``Σ_k |M_k|`` can be met by adding equal evidence for every class inside the
  ROI (issue 14's measurement); and evidence *against* a class decides as much as evidence for one
  (a marker that reads "class m" is negative evidence for the true class y), which a ReLU would
  leave unpunished. For two classes ``m = |M_1 − M_0|``.

Only items with a known, non-empty ROI contribute: the others get exactly 0 and no gradient (they
are left out of the computation, not multiplied by 0). A map that is zero everywhere gives ``dice``
1 and ``outside`` 0, with finite gradients (no 0/0): the denominators carry a small ``eps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["EPS", "grid_roi", "roi_cam_loss"]

EPS = 1e-6


def grid_roi(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W]`` ROI masks (bool or soft ``[0, 1]``) → ``[B, h, w]`` share of each cell inside the ROI."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]


def roi_cam_loss(features: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                 kind: str) -> torch.Tensor:
    """Per-item CAM–ROI loss ``[B]`` (0 for items whose ROI is empty or unknown).

    Args:
        features: the trunk's output ``A`` ``[B, C, h, w]`` (the Grad-CAM target layer).
        head_weight: the linear head's ``W`` ``[K, C]``.
        targets: true classes ``[B]``.
        masks: ROI masks ``[B, H, W]`` in the input frame (after the same geometric augmentation as
            the images); all-zero = no usable ROI (unknown, or known to be empty).
        kind: ``"dice"`` or ``"outside"`` (module docstring).
    """
    if kind not in ("dice", "outside"):
        raise ValueError(f"roi_cam_loss: kind must be 'dice' or 'outside', got {kind!r}")
    batch = features.shape[0]
    usable = masks.flatten(1).amax(dim=1) > 0
    loss = features.new_zeros(batch, dtype=torch.float32)
    rows = usable.nonzero().flatten()
    if rows.numel() == 0:
        return loss
    chosen = features.index_select(0, rows).float()
    roi = grid_roi(masks.index_select(0, rows), tuple(chosen.shape[-2:]))
    maps = torch.einsum("bchw,kc->bkhw", chosen, head_weight.float())  # M_k for every class
    if kind == "dice":
        cam = maps[torch.arange(rows.numel(), device=maps.device), targets.index_select(0, rows)].relu()
        low = cam.amin(dim=(1, 2), keepdim=True)
        high = cam.amax(dim=(1, 2), keepdim=True)
        cam = (cam - low) / (high - low + EPS)
        overlap = (cam * roi).sum(dim=(1, 2))
        term = 1 - 2 * overlap / (cam.sum(dim=(1, 2)) + roi.sum(dim=(1, 2)) + EPS)
    else:
        mass = (maps - maps.mean(dim=1, keepdim=True)).abs().sum(dim=1)
        term = (mass * (1 - roi)).sum(dim=(1, 2)) / (mass.sum(dim=(1, 2)) + EPS)
    return loss.index_put((rows,), term)
