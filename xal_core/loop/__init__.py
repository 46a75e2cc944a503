"""The active-learning loop: training rounds, oracle, ledger, metrics and reports (docs/loop.md).

``ActiveLearner`` is the loop itself, for use from Python with any ``PoolScorer`` (in-process here,
or ``xal_service.loop_scorer.ServiceScorer`` through the gRPC service) and any ``Oracle``
(simulated, or a CSV a person fills in); ``xal run`` / ``xal demo`` wire it up in
``xal_cli.session.RunSession``. Imports are lazy so that ``xal_core.loop.ledger``
stays cheap to import for a dashboard that only reads a ledger.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActiveLearner": "learner", "NeedsAnnotations": "learner", "RoundEvent": "learner",
    "Protocol": "protocol", "TrainRecipe": "recipe",
    "DataSpec": "data_spec", "ExperimentData": "experiment", "prepare_data": "experiment",
    "Ledger": "ledger", "LedgerError": "ledger", "LedgerConflict": "ledger", "Arm": "ledger",
    "AcquisitionRow": "ledger",
    "Annotation": "annotations",
    "Oracle": "oracle", "SimulatedOracle": "oracle", "FileOracle": "oracle", "write_labelling_sheet": "oracle",
    "PoolScorer": "scorers", "InProcessScorer": "scorers", "ScoredPool": "scorers",
    "RoundMetrics": "metrics", "evaluate": "metrics", "classification_metrics": "metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
