"""``AnnotationServer``: the annotator app on uvicorn, bound to its socket before it serves.

Binding first gives the real port at once (``--listen 127.0.0.1:0`` in tests) and fails early
with a clear message when the port is taken. Without a token only a loopback address is served
(``xal_core.access``: the same rule as ``xal serve``). ``serve()`` runs in the foreground and
stops on Ctrl-C / SIGTERM (``xal annotate``); ``start()`` runs in a thread beside the loop
(``xal run --oracle web``) until ``stop()``.

Around the app (``guard``): only requests naming an allowed host (``localhost``, ``127.0.0.1``,
``[::1]``, the listen host — for a wildcard listen this machine's names and any IP address — and
``allowed_hosts``, e.g. ``--allowed-host annotate.example.org`` behind a reverse proxy) are answered; at most 64 at once; a connection must send its request head
within ``head_timeout`` seconds and at most 128 may wait for one, so idle sockets never lock the
page out (there is no connection cap that they could fill).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from xal_core.access import is_loopback, split_listen

from .guard import HostCheck, InFlightLimit, guarded_h11

__all__ = ["AnnotationServer"]


class _Uvicorn(uvicorn.Server):
    """uvicorn that ends on Ctrl-C / SIGTERM and lets the command return normally (exit code 0,
    the ledger closed by its ``with``), instead of re-raising the signal once it has stopped."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: do not wait for open connections
        self.should_exit = True


def allowed_host_names(listen_host: str, extra: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The ``Host`` names served: loopback names, the listen host (for a wildcard listen, this
    machine's own name), and ``extra``. ``ValueError`` for an extra that is not a host name."""
    names = ["localhost", "127.0.0.1", "[::1]"]
    bare = listen_host.strip("[]")
    if bare in ("0.0.0.0", "::", ""):
        names += [socket.gethostname().lower(), socket.getfqdn().lower()]
    else:
        names.append(f"[{bare}]" if ":" in bare else bare.lower())
    for name in extra:
        clean = name.strip().lower().rstrip(".")
        if not clean or any(c in clean for c in "/@ ?#") or (":" in clean and not clean.startswith("[")):
            raise ValueError(f"--allowed-host {name!r}: expected a host name or address without scheme or port "
                             "(IPv6 in brackets)")
        names.append(clean)
    return tuple(dict.fromkeys(names))


class AnnotationServer:
    """Serves ``app`` on ``listen`` (``HOST:PORT``)."""

    def __init__(self, app: Starlette, listen: str = "127.0.0.1:8080", *, has_token: bool = False,
                 allowed_hosts: tuple[str, ...] | list[str] = (), head_timeout: float = 10.0,
                 max_in_flight: int = 64) -> None:
        host, port = split_listen(listen)
        if not has_token and not is_loopback(host):
            raise ValueError(f"--listen {listen}: the annotator serves a non-loopback address only with a "
                             "--token-file (the page records expert labels)")
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host.strip("[]"), port))
        except OSError as error:
            self._socket.close()
            raise ValueError(f"--listen {listen}: cannot bind ({error.strerror})") from None
        self._socket.listen(256)
        bound = self._socket.getsockname()
        self.host, self.port = host, int(bound[1])
        self.allowed_hosts = allowed_host_names(host, allowed_hosts)
        wildcard = host.strip("[]") in ("0.0.0.0", "::", "")
        guarded = HostCheck(InFlightLimit(app, max_in_flight), self.allowed_hosts, any_address=wildcard)
        config = uvicorn.Config(guarded, log_level="warning", access_log=False, timeout_keep_alive=5,
                                http=guarded_h11(head_timeout), h11_max_incomplete_event_size=16 * 1024,
                                proxy_headers=False, lifespan="off")
        self._server = _Uvicorn(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "localhost") else self.host
        return f"http://{host}:{self.port}/"

    def serve(self) -> None:
        """Serve in this thread until Ctrl-C or SIGTERM."""
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()

    def start(self, timeout: float = 30.0) -> AnnotationServer:
        """Serve from a daemon thread; returns once requests are answered."""
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="xal-annotate", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the annotator did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> AnnotationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
