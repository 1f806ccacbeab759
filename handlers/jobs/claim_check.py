"""Before a worker starts a job that waited in a queue: is its claim still the one to run?

A spawned call can wait in an executor's queue (a GPU limit, scarcity) past its lease.
By then the watcher may have claimed the next attempt, or the job may be done; a late
worker that ran anyway would do the work twice (only the done marker stops the second
commit). One LIST of the job's claims decides, before the lease's first heartbeat
(which would make a dead claim look alive again).
"""

from __future__ import annotations

import json

from handlers.contract.keys import ClaimKind, parse_claim_key
from handlers.jobs.claims import DISPATCHED_PHASE
from handlers.jobs.spec import JobSpec
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError

# A worker refuses a never-heartbeaten claim this long before the watcher's start
# deadline, so the two never both act on it (the first heartbeat follows within seconds).
START_MARGIN_SECONDS = 60.0


async def refusal_reason(bucket: Bucket, job: JobSpec, *, start_deadline_seconds: float) -> str:
    """Why this worker must not run ``job`` now; "" when its claim is still good."""
    ref = job.ref
    listing = await bucket.list(ref.claims_prefix)
    mine = None
    newest = 0
    ended = False
    for obj in listing.objects:
        parsed = parse_claim_key(obj.key)
        if parsed is None:
            continue
        newest = max(newest, parsed.attempt)
        if parsed.attempt == job.attempt:
            if parsed.kind == ClaimKind.CLAIM:
                mine = obj
            else:
                ended = True
    if newest > job.attempt:
        return f"superseded: attempt {newest} was claimed after this one ({job.attempt})"
    if mine is None or ended:
        return f"attempt {job.attempt} has no live claim (released, failed or committed)"
    age = (listing.server_time - mine.last_modified).total_seconds()
    if age <= job.lease_ttl_seconds:
        return ""
    try:
        phase = json.loads(await bucket.get_bytes(mine.key)).get("phase")
    except (BucketError, ValueError, AttributeError):
        phase = None
    if phase == DISPATCHED_PHASE and age <= start_deadline_seconds - START_MARGIN_SECONDS:
        return ""  # queued, never started: still within its start deadline
    return f"stale: the claim is {age:.0f} s old (lease {job.lease_ttl_seconds:.0f} s)"
