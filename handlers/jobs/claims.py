"""The claim protocol's writes (DESIGN §4.3, §5): every key under ``_dropgpu/claims/``.

A job's claims live under ``_dropgpu/claims/<job id>/`` (names in
handlers/contract/keys.py, one ``ClaimKind`` each):

- ``attempt-n``: the claim. The tick wins it with create-if-absent; the lease
  then rewrites it as a heartbeat (its LastModified is the liveness signal).
- ``attempt-n.failed-<ms>``: attempt n failed transiently; retry at that time.
- ``attempt-n.released``: attempt n was given back unfinished (Ctrl-C, a failed
  spawn); the next tick may claim n+1 at once and the attempt uses up no try.
- both ``attempt-n.failed-<ms>`` and ``attempt-n.released``: a job file whose
  source is not uploaded yet (``defer_claim``): no try used, and n+1 is not
  claimed before that time.

This module is the only writer of those keys; watcher/state.py is their one
reader. The done marker (the fence) and the manifest are the commit's
(handlers/jobs/commit.py), which calls ``delete_claims`` once it has published.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.contract.keys import JobRef
from handlers.contract.manifest import iso, utc_now
from handlers.jobs.retry import with_storage_retries
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError
from infra.text import one_line

log: FilteringBoundLogger = structlog.get_logger(__name__)
# The phase of a claim as the dispatcher writes it; the worker's first heartbeat replaces
# it, so a claim still in this phase was never started (watcher/state.py reads it).
DISPATCHED_PHASE = "claimed"


def claim_body(**fields: Any) -> bytes:
    """A claim-family body: who wrote it and when, then ``fields`` (JSON, UTF-8)."""
    body = {"owner": f"{socket.gethostname()}:{os.getpid()}", "updated_at": iso(utc_now())}
    body.update(fields)
    return json.dumps(body, ensure_ascii=False).encode()


async def create_claim(bucket: Bucket, ref: JobRef, attempt: int, *, claimed_at: str) -> bool:
    """Try to win ``attempt-n``; False when another watcher created it first.

    One create-if-absent, no retries: a retried create whose first try landed
    would read as a lost race, and the claim would wait out its lease unrun.
    """
    body = claim_body(
        phase=DISPATCHED_PHASE,
        progress=0.0,
        job_id=ref.job_id,
        input_key=ref.input_key,
        attempt=attempt,
        claimed_at=claimed_at,
    )
    return await bucket.create_if_absent(ref.claim_key(attempt), body)


def spawned_call_key(ref: JobRef, attempt: int) -> str:
    """``attempt-n.call``: the executor's id of the queued call that runs attempt n.

    Its own key, not a field of the claim: the worker's heartbeats rewrite the claim and
    would race the dispatcher's write. parse_claim_key skips it; delete_claims removes it.
    """
    return f"{ref.claim_key(attempt)}.call"


async def record_spawned_call(bucket: Bucket, ref: JobRef, attempt: int, call_id: str) -> None:
    """Remember which queued call runs attempt n, so a superseded one can be cancelled."""
    await with_storage_retries(
        lambda: bucket.put_bytes(spawned_call_key(ref, attempt), claim_body(call_id=call_id))
    )


async def read_spawned_call(bucket: Bucket, ref: JobRef, attempt: int) -> str | None:
    """The call id recorded for attempt n; None when none was (or it is unreadable)."""
    try:
        body = json.loads(await bucket.get_bytes(spawned_call_key(ref, attempt)))
    except (BucketError, ValueError):
        return None
    call_id = body.get("call_id") if isinstance(body, dict) else None
    return call_id if isinstance(call_id, str) and call_id else None


async def write_heartbeat(bucket: Bucket, claim_key: str, **fields: Any) -> None:
    """Rewrite the claim (the lease's heartbeat). Raises BucketError; the lease judges it.

    No retries here: the lease times each beat itself and must see a slow one.
    """
    await bucket.put_bytes(claim_key, claim_body(**fields))


async def record_failure(
    bucket: Bucket, ref: JobRef, attempt: int, *, message: str, retry_at_ms: int
) -> None:
    """Write ``attempt-n.failed-<retry_at_ms>``: the tick claims n+1 once that time passed."""
    body = json.dumps(
        {
            "kind": "transient",
            "message": one_line(message, 1000),  # URLs in it redacted
            "attempt": attempt,
            "retry_at": iso(datetime.fromtimestamp(retry_at_ms / 1000, UTC)),
        },
        ensure_ascii=False,
    ).encode()
    await with_storage_retries(
        lambda: bucket.create_if_absent(ref.failure_key(attempt, retry_at_ms), body)
    )


async def release_claim(bucket: Bucket, ref: JobRef, attempt: int) -> bool:
    """Give attempt n back unfinished; False (logged) when storage refused.

    An unreleased claim is not lost: it expires with its lease, only later.
    """
    try:
        body = claim_body(released_at=iso(utc_now()))  # unique per caller
        await bucket.create_if_absent(ref.released_key(attempt), body)
    except BucketError as exc:
        log.warning("claim_release_failed_expires_with_lease", error=one_line(exc))
        return False
    return True


async def defer_claim(
    bucket: Bucket, ref: JobRef, attempt: int, *, message: str, retry_at_ms: int
) -> None:
    """Give attempt n back until ``retry_at_ms`` without using a try (DESIGN §10).

    The retry time goes first: a released marker alone would be claimed at once.
    Cut short between the two, the job counts one attempt and retries at that time.
    """
    body = json.dumps(
        {
            "kind": "waiting",
            "message": one_line(message, 1000),
            "attempt": attempt,
            "retry_at": iso(datetime.fromtimestamp(retry_at_ms / 1000, UTC)),
        },
        ensure_ascii=False,
    ).encode()
    await with_storage_retries(
        lambda: bucket.create_if_absent(ref.failure_key(attempt, retry_at_ms), body)
    )
    await with_storage_retries(
        lambda: bucket.create_if_absent(ref.released_key(attempt), claim_body(waiting=True))
    )


async def drop_claim(bucket: Bucket, claim_key: str) -> None:
    """Delete one claim whose job has nothing left to do (its input is gone or replaced)."""
    try:
        await bucket.delete(claim_key)
    except BucketError as exc:
        log.warning("claim_delete_failed", claim=claim_key, error=one_line(exc))


async def delete_claims(bucket: Bucket, ref: JobRef) -> None:
    """Delete every claim-family key of the job (the commit's last step)."""
    listing = await with_storage_retries(lambda: bucket.list(ref.claims_prefix))
    for obj in listing.objects:
        await with_storage_retries(lambda key=obj.key: bucket.delete(key))


async def reset_job(bucket: Bucket, ref: JobRef) -> None:
    """Make a finished job claimable again (``dropgpu retry``). Raises BucketError.

    The reset marker goes first: the done index (watcher/done_index.py) keeps
    listing the job as done, and only this marker tells a tick to run it again.
    Then the other claims and the failed index, the done marker last: until it is
    gone no watcher starts the job, so a reset cut short leaves it finished (and
    `dropgpu retry` can simply be run again). The next commit deletes the marker.
    """
    body = claim_body(reset_at=iso(utc_now()))
    await with_storage_retries(lambda: bucket.put_bytes(ref.reset_key, body))
    listing = await with_storage_retries(lambda: bucket.list(ref.claims_prefix))
    for obj in listing.objects:
        if obj.key != ref.reset_key:
            await with_storage_retries(lambda key=obj.key: bucket.delete(key))
    await with_storage_retries(lambda: bucket.delete(ref.failed_index_key))
    await with_storage_retries(lambda: bucket.delete(ref.done_key))
