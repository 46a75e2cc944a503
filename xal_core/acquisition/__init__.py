"""Turning per-item scores into an acquisition list: batch scoring, pool-wide ranking, strategies.

``score_batch`` / ``score_chunk`` compute the contract's per-item scores; ``rank_pool`` merges them
into the service's top-k; ``strategies`` (one small class each over a ``ScoreTable``) choose what
the active-learning loop acquires (docs/strategies.md).
"""

from .batch_scoring import BatchScores, ScoringConfig, score_batch
from .pool_ranking import PoolRanking, rank_fusion, rank_pool, rank_stored_pool
from .pool_scoring import keep_rows, score_chunk
from .strategies import STRATEGY_NAMES, Acquisition, ScoreTable, Strategy, make_strategy

__all__ = ["Acquisition", "BatchScores", "PoolRanking", "STRATEGY_NAMES", "ScoreTable", "ScoringConfig", "Strategy",
           "keep_rows", "make_strategy", "rank_fusion", "rank_pool", "rank_stored_pool", "score_batch", "score_chunk"]
