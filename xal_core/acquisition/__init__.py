"""Turning per-item scores into an acquisition list: batch scoring and pool-wide ranking."""

from .batch_scoring import BatchScores, ScoringConfig, score_batch
from .pool_ranking import PoolRanking, rank_pool

__all__ = ["BatchScores", "PoolRanking", "ScoringConfig", "rank_pool", "score_batch"]
