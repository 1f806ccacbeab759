"""The data-plane engine: everything a job does between its claim and its commit.

- spec.py: JobSpec, the plain data a worker gets for one claimed job.
- runner.py: runs one attempt (download, handler, upload, commit); orchestrates only.
- claims.py: every write of a claim-family key (``_dropgpu/claims/``).
- lease.py: the heartbeat that keeps a claim alive, and the lease's self-fencing.
- manifests.py: building manifest.json (pure).
- commit.py: done marker (the fence), manifest, failed index, feed record, claim cleanup.
- failures.py: a transient failure's retry-or-give-up.
- outcome.py: JobOutcome and JobStatus, what an attempt came to.
- retry.py: retrying storage calls; the one backoff function (equal jitter).
- webhooks.py: signed delivery of a committed manifest, and its delivery record.

Every bucket write a job makes happens in this package; the control plane
(watcher/) writes job state only through claims.py, commit.py and failures.py.
"""
