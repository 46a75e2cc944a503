"""Seeds derived from names, so that every random draw of a run is fixed by what it is for.

A round's weight initialisation, its ``fit`` seed, the initial labels, the random strategies' draws
and the MC-dropout masks each take ``derived_seed(purpose, arm seed, round…)``: a rerun draws the
same, whichever process or Python version runs it, and no two purposes share a stream.

>>> derived_seed("initial", 0) == derived_seed("initial", 0) != derived_seed("initial", 1)
True
"""

from __future__ import annotations

import hashlib

__all__ = ["derived_seed"]


def derived_seed(*parts: object) -> int:
    """A 31-bit seed from named parts (stable across processes and Python versions, unlike ``hash``)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF
