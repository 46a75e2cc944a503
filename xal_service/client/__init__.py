"""The client side of the scoring service: what a program that calls ``xal serve`` imports.

* ``scoring_client`` — ``ScoringClient``: one method per RPC, and the domain level
  (``run_scoring_job``, ``score_every_item``) that takes a ``ScoringConfig`` and returns plain rows;
* ``job_results`` — what the domain level returns (``JobProgress``, ``RankedItem``,
  ``ScoringJobResult``, ``ItemScoreRows``, ``ScoringJobFailed``), no protobuf;
* ``loop_scorer`` — ``ServiceScorer``, the loop's ``PoolScorer`` through a running service.

It imports ``xal_service.codec`` (which brings ``xal_service.errors``), ``xal_service.wire`` and
``xal_core``, never the server, the jobs or the registry (``tests/test_import_graph.py``).
"""

from .job_results import ItemScoreRows, JobProgress, RankedItem, ScoringJobFailed, ScoringJobResult
from .scoring_client import ScoringClient

__all__ = ["ItemScoreRows", "JobProgress", "RankedItem", "ScoringClient", "ScoringJobFailed", "ScoringJobResult"]
