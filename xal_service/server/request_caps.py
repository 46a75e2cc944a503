"""Size checks on a ``ScoreBatch`` request, made before anything is allocated for it.

Why: the tensors of a request carry their own bytes (``codec.decode_tensor`` refuses a shape its
data does not fill), but the ROI frame is only declared — two int32 fields — and the scorer
builds resampling plans of length ``H`` and ``W``, keeps the CAM grid's rows resampled to the
frame's width (``h × W`` floats), and visits every pixel of the frame. Unchecked, a 293-byte
request with box ROIs and ``width = 20 000 001`` costs ~1 GB at its peak and leaves +460 MB of
cached plans behind; ``width = 2³¹ − 1`` asks for 17 GB. Every check here names the field to fix
and answers ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from ..errors import invalid_argument
from ..wire import scoring_pb2 as pb
from .config import ServiceLimits

__all__ = ["check_score_batch_sizes"]


def check_score_batch_sizes(roi: pb.RoiBatch, batch: int, grid: tuple[int, int], request_bytes: int,
                            limits: ServiceLimits) -> None:
    """Refuse a frame larger than ``--max-roi-side``, a CAM grid whose resampled rows or columns
    outgrow ``limits.max_grid_scratch``, box ROIs with more than ``limits.max_boxes_per_image``
    slots per image, and box ROIs that declare more work than the request could pay for (see :class:`~xal_service.server.config.ServiceLimits`)."""
    side = limits.max_roi_side
    for name, value in (("height", roi.height), ("width", roi.width)):
        if value > side:
            raise invalid_argument(f"roi.{name}: {value} exceeds this server's ROI frame limit of {side} pixels "
                                   f"per side (--max-roi-side)")
    height, width = roi.height, roi.width
    h, w = grid
    scratch = max(h * width, w * height)
    if scratch > limits.max_grid_scratch:
        raise invalid_argument(
            f"features.shape: a {h}×{w} CAM grid resampled to a {height}×{width} ROI frame needs {scratch} values "
            f"of scratch per image (grid rows × frame width, grid columns × frame height); this server allows "
            f"{limits.max_grid_scratch}"
        )
    if roi.WhichOneof("kind") == "boxes":
        shape = list(roi.boxes.boxes.shape)
        slots = shape[1] if len(shape) == 3 else 0  # a wrong shape is the codec's to name
        if slots > limits.max_boxes_per_image:
            raise invalid_argument(
                f"roi.boxes.boxes.shape: {slots} box slots per image (M) exceed this server's limit of "
                f"{limits.max_boxes_per_image} (--max-boxes-per-image)")
        work = batch * height * (width + max(slots, 0))
        allowed = max(limits.max_roi_work_floor, limits.max_roi_work_factor * request_bytes)
        if work > allowed:
            raise invalid_argument(
                f"roi.boxes: {batch} images × {height} rows × ({width} columns + {slots} box slots) = {work} steps "
                f"to score for a request of {request_bytes} bytes; this server scores at most "
                f"max({limits.max_roi_work_floor}, {limits.max_roi_work_factor} × request bytes) box-ROI steps per "
                "request (B × H × (W + M))"
            )
