"""The gRPC scoring service: ``xal.v1.Scoring`` (``protos/xal/v1/scoring.proto``).

Models are loaded (``registry``), pools registered, and scoring jobs run over them one at a time
with durable per-chunk results (``jobs``); callers with their own model score inline with
``ScoreBatch``. The server (``server``, asyncio) adds health, reflection, token auth, TLS, roots
for server-side paths and caps on what a request may cost (docs/security.md).

Run it with ``xal serve --state DIR``; call it with ``xal_service.client.ScoringClient`` or
``xal score``.
"""
