"""Scoring jobs over registered pools, run by the server one at a time.

* ``manager`` — ``JobManager``: the queue and its worker, resume after a restart, cancellation;
* ``pins`` — what a job pins when it is submitted (model file and pool by content) and checks when it runs;
* ``files`` — a job's results on disk: one file per finished chunk, and the ranking;
* ``state_probe`` — whether the state folder can be written, watched for health.

It reads models and pools from ``xal_service.registry`` and runs a job in this process or on an
engine (``xal_service.engines``); it never imports the server.
"""
