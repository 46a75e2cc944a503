"""Engines a scoring job runs on.

The default engine is the job worker of ``xal_service.jobs`` itself: one process, one thread. When a
pool outgrows one machine the same scoring function runs inside an existing distributed engine,
Ray Data (``xal_service.engines.ray``), never in a home-made cluster. Importing this package
imports no engine: Ray is an optional extra (``pip install 'xal-ml[ray]'``).
"""

ENGINES = ("in-process", "ray")

__all__ = ["ENGINES"]
