"""The gRPC scoring service: ``xal.v1.Scoring`` (``protos/xal/v1/scoring.proto``).

Models are loaded and pools registered (``registry/``), and scoring jobs run over them one at a
time with durable per-chunk results (``jobs/``); callers with their own model score inline with
``ScoreBatch``. The server (``server/``, asyncio) adds health, reflection, token auth, TLS, roots
for server-side paths and caps on what a request may cost (docs/security.md).

The folders are the parts (docs/architecture.md, "The service package"):

* ``client/`` — ``ScoringClient``, its domain results, the loop's ``ServiceScorer``;
* ``codec`` — wire messages ⇄ tensors, ROIs and parameters, shared by both sides; ``errors`` —
  request errors as status codes;
* ``server/``, ``jobs/``, ``registry/`` — the server, its scoring jobs, its models and pools;
* ``engines/ray/`` — jobs on a Ray cluster; ``wire/`` — the generated stubs.

A client loads ``client/``, ``codec``, ``errors`` and ``wire/``, nothing of the server side.

Run it with ``xal serve --state DIR``; call it with ``xal_service.client.ScoringClient`` or
``xal score``.
"""
