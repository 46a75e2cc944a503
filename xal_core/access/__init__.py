"""Who may reach a server xal runs: token files and listen addresses, shared by every server.

The gRPC scoring service (``xal serve``) and the browser annotator (``xal annotate``) follow one
rule, so it has one home: without a token a server binds to loopback only; a token is a file
(never a command-line value, which ``ps`` would show) of at least 16 characters.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

__all__ = ["MIN_TOKEN_LENGTH", "is_loopback", "read_token", "split_listen"]

MIN_TOKEN_LENGTH = 16


def read_token(path: str | Path) -> str:
    """The token in ``path`` (surrounding white space dropped); too short is an error."""
    token = Path(path).read_text().strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{path}: the token must be at least {MIN_TOKEN_LENGTH} characters, got {len(token)}")
    return token


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``; brackets allowed)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` → ``(host, port)``; ``ValueError`` naming the flag's value otherwise."""
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--listen: expected HOST:PORT, got {listen!r}")
    return host, int(port_text)
