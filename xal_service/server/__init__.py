"""The server side of the scoring service: ``xal serve``.

* ``config`` — ``ServerConfig`` and ``ServiceLimits``: every ``xal serve`` setting and cap with its
  default (no gRPC import, so the command line reads its defaults there);
* ``serve`` — builds and runs the ``grpc.aio`` server (``start_server``, ``serve_forever``,
  ``dedicate_process``);
* ``servicer`` — one coroutine per RPC; ``handlers`` — the method table and its deserializers;
  ``replies`` — the reply messages built from the server's objects;
* ``auth`` — the token interceptor; ``limits`` and ``request_caps`` — the stream counter and the
  checks that hold a request, a client and an upload to ``ServiceLimits``; ``health_gate`` — the
  health status; ``statistics`` — counters per RPC and stage;
* ``metrics`` — ``--metrics-listen``: Prometheus ``/metrics`` over HTTP (imported only with the flag);
* ``standard_services`` — health with ``List``, and reflection as ``grpc.reflection.v1`` and ``v1alpha``;
* ``process`` — ``LocalServer``, ``xal serve`` as a child process of the caller.

It runs jobs (``xal_service.jobs``) over the models and pools of ``xal_service.registry``, and
reads and writes the wire through ``xal_service.codec``.
"""
