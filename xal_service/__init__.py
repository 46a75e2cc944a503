"""The gRPC scoring service (models, pools, jobs, streamed rankings).

Not implemented yet: it is its own issue and builds on ``xal_core.acquisition.score_batch`` and
``xal_kernels``. Nothing here is importable as a server today, on purpose: no stub pretends to serve.
"""
