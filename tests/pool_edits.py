"""Editing a pool store behind ``xal ingest``'s back, as tests that need odd content do.

The service verifies every chunk against the checksum in ``manifest.json`` when a job reads it and
skips a chunk that no longer matches (a file damaged after ingest). A test that plants content
ingest itself refuses (a NaN image) or that a source rarely has (unknown ROIs) edits the arrays
and then records the edited chunks' checksums again with :func:`record_checksums`, so the pool is
consistent, as one written that way would be.
"""

from __future__ import annotations

import json
from pathlib import Path

from xal_core.data import pool_store


def record_checksums(pool: Path) -> None:
    """Recompute every chunk's scoring checksum in ``pool/manifest.json`` from the stored arrays."""
    store = pool_store.PoolStore.open(pool)
    manifest = json.loads((pool / "manifest.json").read_text())
    for number in range(store.n_chunks):
        raw = store.raw_chunk(number)
        manifest["checksums"][number]["scoring"] = pool_store._checksum([raw[name] for name in sorted(raw)])
    (pool / "manifest.json").write_text(json.dumps(manifest, indent=1))
