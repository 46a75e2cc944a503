"""``xal serve``: run the gRPC scoring service (``xal_service``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from xal_service.server.config import ServerConfig, ServiceLimits
from xal_service.server.event_loop import EVENT_LOOPS

from .defaults import default_of


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="run the gRPC scoring service")
    listen = default_of(ServerConfig, "listen")
    parser.add_argument("--listen", default=listen, help=f"HOST:PORT (port 0 = any free port; default {listen})")
    parser.add_argument("--state", type=Path, required=True, help="directory for the server's state")
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token clients must send")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate (with --tls-key) to serve TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key")
    parser.add_argument("--max-message-mb", type=int, default=default_of(ServerConfig, "max_message_mb"),
                        help="largest request or response (default %(default)s)")
    parser.add_argument("--workers", type=int, default=default_of(ServerConfig, "workers"),
                        help="handler threads (default %(default)s)")
    parser.add_argument(
        "--allow-remote-without-token", action="store_true",
        help="serve a non-loopback address without --token-file (not recommended)",
    )
    parser.add_argument("--model-root", type=Path, action="append", default=[],
                        help="a folder LoadModel paths may point into (repeatable; default STATE/models)")
    parser.add_argument("--pool-root", type=Path, action="append", default=[],
                        help="a folder RegisterPool paths may point into (repeatable; default STATE/pools)")
    parser.add_argument("--trust-torchscript-uploads", action="store_true",
                        help="accept uploaded TorchScript models (they run code when loaded; default: ONNX only)")
    parser.add_argument("--max-model-bytes", type=int, default=default_of(ServiceLimits, "max_model_bytes"),
                        help="largest uploaded model file in bytes (default %(default)s)")
    parser.add_argument("--max-roi-side", type=int, default=default_of(ServiceLimits, "max_roi_side"),
                        help="largest ROI frame height and width a ScoreBatch may declare (default %(default)s)")
    parser.add_argument("--max-boxes-per-image", type=int, default=default_of(ServiceLimits, "max_boxes_per_image"),
                        help="most box slots per image (M of roi.boxes.boxes [B, M, 4]) a ScoreBatch may send "
                             "(default %(default)s)")
    parser.add_argument("--max-streams-per-client", type=int, default=default_of(ServiceLimits, "max_streams_per_client"),
                        help="open WatchJob/GetRanking/LoadModel streams per client address (default %(default)s)")
    parser.add_argument("--max-streams", type=int, default=default_of(ServiceLimits, "max_streams"),
                        help="open streams in total (default %(default)s)")
    parser.add_argument("--max-inflight-batches", type=int, default=default_of(ServiceLimits, "max_inflight_batches"),
                        help="ScoreBatch calls scored or waiting at once; more are refused with RESOURCE_EXHAUSTED "
                             "(default %(default)s)")
    parser.add_argument("--metrics-listen", metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (loopback only without "
                             "--token-file; with it, scrapers send the token as a bearer header; HTTPS with "
                             "--tls-cert); default: no metrics endpoint")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default=default_of(ServerConfig, "event_loop"),
                        help="the server's event loop (default %(default)s: faster gRPC hand-offs; asyncio = "
                             "the standard loop)")
    add_ray_arguments(parser, engine_default="in-process")
    parser.set_defaults(run=run)


def add_ray_arguments(parser: argparse.ArgumentParser, engine_default: str) -> None:
    """The options of the Ray engine, shared by `xal serve` and `xal score` (docs/distributed.md)."""
    engines = ("in-process", "ray") if engine_default == "in-process" else ("service", "ray")
    parser.add_argument("--engine", choices=engines, default=engine_default,
                        help=f"where scoring runs (default {engine_default}); ray = on a Ray cluster (xal-ml[ray])")
    parser.add_argument("--ray-address", default="auto",
                        help="auto = the cluster this host joined with `ray start`; local = a private one-node "
                             "cluster; or HOST:PORT / ray://HOST:PORT (default auto)")
    parser.add_argument("--ray-workers", type=int, default=2, help="scorer actors, each loads the model once (default 2)")
    parser.add_argument("--ray-cpus-per-worker", type=float, default=1.0, help="CPUs per actor (default 1)")
    parser.add_argument("--ray-gpus-per-worker", type=float, default=0.0, help="GPUs per actor: 0 on CPU hosts, 1 on GPU nodes")


def ray_engine_config(args: argparse.Namespace):
    """``RayEngineConfig`` from the parsed options (``ValueError`` on bad values)."""
    from xal_service.engines.ray.config import RayEngineConfig

    return RayEngineConfig(address=args.ray_address, workers=args.ray_workers, cpus_per_worker=args.ray_cpus_per_worker,
                           gpus_per_worker=args.ray_gpus_per_worker)


def run(args: argparse.Namespace) -> int:
    from xal_service.server.serve import serve_forever  # gRPC only when serving

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.max_message_mb < 1 or args.workers < 1:
        raise ValueError("--max-message-mb and --workers must be >= 1")
    config = ServerConfig(
        listen=args.listen,
        state=args.state,
        token_file=args.token_file,
        allow_remote_without_token=args.allow_remote_without_token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_message_mb=args.max_message_mb,
        workers=args.workers,
        ray=ray_engine_config(args) if args.engine == "ray" else None,
        model_roots=tuple(args.model_root),
        pool_roots=tuple(args.pool_root),
        trust_torchscript_uploads=args.trust_torchscript_uploads,
        metrics_listen=args.metrics_listen,
        event_loop=args.event_loop,
        limits=ServiceLimits(max_roi_side=args.max_roi_side, max_boxes_per_image=args.max_boxes_per_image,
                             max_model_bytes=args.max_model_bytes,
                             max_streams_per_client=args.max_streams_per_client, max_streams=args.max_streams,
                             max_inflight_batches=args.max_inflight_batches),
    )
    serve_forever(config, announce=lambda line: print(line, flush=True))
    return 0
