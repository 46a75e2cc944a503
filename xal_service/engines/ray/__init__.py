"""Scoring beyond one machine on Ray Data (``pip install 'xal-ml[ray]'``).

``score_pool_on_ray(pool, model, k=…, scores_dir=…)`` runs the job worker's steps — the pool store
read chunk by chunk, the model's forward pass, ``score_batch``, per-item results, a merged top-k —
inside Ray Data: read tasks per chunk, a pool of scorer actors that each load the model once
(``num_gpus`` per actor a parameter, 0 on CPU hosts), per-item scores written as Parquet, and the
pool's top-k merged on the driver from each block's top-k. The ranking equals the in-process one
exactly. See docs/distributed.md.

Importing this package imports neither Ray nor pyarrow (the job manager and the CLI name the
engine's options on any host); the engine's names load on first use, and without the extra they
raise ``ImportError`` naming what to install.
"""

from .config import RAY_PIN, RayEngineConfig, require_ray

_LAZY = {"RayScoringResult": "engine", "ScoringCancelled": "engine", "connect": "engine",
         "score_pool_on_ray": "engine", "BlockReport": "merge"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_ray()
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)

__all__ = ["RAY_PIN", "BlockReport", "RayEngineConfig", "RayScoringResult", "ScoringCancelled", "connect",
           "require_ray", "score_pool_on_ray"]
