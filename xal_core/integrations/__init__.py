"""Adapters that let external active-learning loops rank with xal's strategies (docs/strategies.md).

* ``xal_core.integrations.baal``: ``XalHeuristic``, a baal heuristic (extra ``baal``);
* ``xal_core.integrations.modal``: ``make_query_strategy``, a modAL query strategy (extra ``modal``).

Each is imported on its own, so neither library is needed to import this package.
"""
