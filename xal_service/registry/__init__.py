"""What the server holds by name — models and pools — and where their files may come from.

* ``registry`` — ``Registry``: loaded models and registered pools, persisted under the state folder;
* ``uploads`` — model files streamed to the server, written aside and renamed once they load;
* ``pool_checks`` — the checks a pool store passes before it is registered (and a job reopens it);
* ``roots`` — where server-side paths in requests may point, and ``Redactor``, which keeps server
  paths out of answers.

Both the server (``LoadModel``, ``RegisterPool``) and the jobs (what a job runs on and pins) use it;
it imports neither.
"""
