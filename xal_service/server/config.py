"""What the server runs with: its settings (``ServerConfig``) and its caps (``ServiceLimits``).

Why a module of its own: this is the one home of every ``xal serve`` default, and it imports no
gRPC, so the command line reads its flags' defaults from here (``xal_cli.defaults.default_of``)
without loading the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..engines.ray.config import RayEngineConfig
from .event_loop import DEFAULT_EVENT_LOOP

__all__ = ["ServerConfig", "ServiceLimits"]


@dataclass(frozen=True)
class ServiceLimits:
    """Per-request, per-client and per-upload caps (``xal serve`` flags of the same names).

    Attributes:
        max_roi_side: largest ROI frame height and width (``--max-roi-side``, default 4096, i.e. a
            4096² frame): bounds the resampling plans a request can make the server build.
        max_roi_work_factor: a box ROI declares its frame without carrying it, so ``B × H × W`` (the
            pixels the scorer visits) may not exceed ``max(max_roi_work_floor, factor × request
            bytes)``; a mask ROI carries its pixels (8 per byte) and passes this by construction.
            The scorer also visits every box slot of every frame row, so the work counted is
            ``B × H × (W + M)``.
        max_roi_work_floor: see above (2^28 pixels, well under a second of scoring).
        max_boxes_per_image: box slots per image, ``M`` of ``roi.boxes.boxes [B, M, 4]``
            (``--max-boxes-per-image``, default 1024; pool stores hold 64 by default).
        max_grid_scratch: the scorer keeps the CAM grid's rows resampled to the frame's width
            (``h × W`` float64 values, and ``w × H`` on the separable path): at most this many.
        max_model_bytes: largest uploaded model file (``--max-model-bytes``).
        max_streams_per_client: concurrent streaming calls (``WatchJob``, ``GetRanking``, ``GetItemScores``,
            ``LoadModel``) from one client address (``--max-streams-per-client``).
        max_streams: concurrent streaming calls in total (``--max-streams``).
        max_inflight_batches: ``ScoreBatch`` calls being scored or waiting for a scoring thread
            (``--max-inflight-batches``). Each holds its request (up to the 64 MiB message cap)
            until it is scored, so without a cap a flood of calls queues unbounded memory behind
            the workers; one over it is refused with ``RESOURCE_EXHAUSTED`` at once.
        max_path_chars: longest server-side path or name a request may give.
    """

    max_roi_side: int = 4096
    max_roi_work_factor: int = 64
    max_roi_work_floor: int = 1 << 28
    max_boxes_per_image: int = 1024
    max_grid_scratch: int = 1 << 21
    max_model_bytes: int = 1 << 30
    max_streams_per_client: int = 16
    max_streams: int = 64
    max_inflight_batches: int = 32
    max_path_chars: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_roi_side", "max_boxes_per_image", "max_model_bytes", "max_streams_per_client", "max_streams",
                     "max_inflight_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ServerConfig:
    """How to run the server.

    Attributes:
        listen: ``host:port``; port 0 picks a free one (written to ``state/server.json``).
        state: directory for the server's state (created if missing).
        token_file: file holding the bearer token; None = no auth (loopback only, see below).
        allow_remote_without_token: bind a non-loopback address without a token anyway.
        tls_cert, tls_key: PEM files to serve TLS.
        max_message_mb: largest request/response; larger ones get RESOURCE_EXHAUSTED.
        workers: threads that run the handlers' blocking work (scoring, loading, file I/O).
        ray: run scoring jobs on this Ray cluster (``xal_service.engines.ray``) instead of the
            server's own job thread; None (the default) keeps them in-process.
        scoring_threads: threads that score inline ``ScoreBatch`` batches, shared by all calls (a
            batch is split across them when torch runs single-threaded, as under ``xal serve``);
            0 (the default) = one per CPU this process may run on.
        model_roots, pool_roots: the only folders server-side paths of ``LoadModel`` /
            ``RegisterPool`` may resolve into; empty = ``state/models`` / ``state/pools``.
        trust_torchscript_uploads: accept uploaded TorchScript files (they run code when loaded).
        limits: per-request, per-client and per-upload caps.
        metrics_listen: ``host:port`` to serve Prometheus metrics on (``/metrics``); None = none.
            Without a token only a loopback address (unless ``allow_remote_without_token``); port 0
            picks a free one (``metrics_port`` in ``state/server.json``).
        event_loop: ``uvloop`` (the default where installed) or ``asyncio`` (``event_loop`` says why).
    """

    listen: str = "127.0.0.1:50051"
    state: Path = Path("xal-state")
    token_file: Path | None = None
    allow_remote_without_token: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_mb: int = 64
    workers: int = 16
    ray: RayEngineConfig | None = None
    scoring_threads: int = 0
    model_roots: tuple[Path, ...] = ()
    pool_roots: tuple[Path, ...] = ()
    trust_torchscript_uploads: bool = False
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    metrics_listen: str | None = None
    event_loop: str = DEFAULT_EVENT_LOOP
