"""The gRPC scoring service: ``xal.v1.Scoring`` (``protos/xal/v1/scoring.proto``).

In this version the server scores caller-computed batches inline (``ScoreBatch``), reports
``Statistics``, and serves ``grpc.health.v1`` and reflection, with token auth and TLS. Models, pools
and jobs answer UNIMPLEMENTED with the reason until the model runtimes and pool stores land.

Run it with ``xal serve --state DIR``; call it with ``xal_service.client.ScoringClient``.
"""
