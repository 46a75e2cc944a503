"""``--option KEY=VALUE`` for dataset adapters (``xal ingest``, ``xal run``): one parser, one message."""

from __future__ import annotations

import json
from typing import Any


def parse_adapter_options(pairs: list[str]) -> dict[str, Any]:
    """``["modality=t1ce", "n=100"]`` → ``{"modality": "t1ce", "n": 100}``; values are JSON when they parse."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options
