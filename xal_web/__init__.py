"""The browser annotator: a page where an expert labels the acquired batch and draws its ROIs.

``xal annotate RUN_DIR`` serves it for a stopped run; ``xal run --oracle web`` serves it while the
run waits for answers and continues as soon as a batch is answered. Answers go through
``xal_core.loop.oracle.AnnotationDesk`` straight into the run's ledger (the file oracle's checks,
one transaction per answer), so a reload, a restart or a second tab never loses or doubles one.

Modules: ``app`` (the ASGI routes), ``auth`` (token rule, login throttle, expiring sessions,
same-origin rule), ``guard`` (security headers on every response, allowed host names, in-flight
limit, deadlines for slow clients), ``views`` (what the page reads: the batch as JSON, pixels,
CAM tiles, why an item was picked, the done state), ``server`` (uvicorn on a socket, in the
foreground or a thread), ``oracle`` (``WebOracle`` for the loop), ``static/`` (plain HTML/CSS/JS).
"""

from __future__ import annotations

from .app import build_app
from .oracle import WebOracle
from .server import AnnotationServer

__all__ = ["AnnotationServer", "WebOracle", "build_app"]
