"""Ending a job (DESIGN §5.3): fence, manifest, failed index, claim cleanup.

The done marker (the fence) and the manifest are written here and nowhere else;
the claims it cleans up are deleted through handlers/jobs/claims.py. Its log
lines carry the job from the caller's structlog context (the runner's, the tick's).

Used by the job runner on success/failure, by failures.py and the tick for
give-ups, and by the tick for repairing a commit that crashed between the fence
and the manifest.

After the manifest, a completion-feed record (its format: handlers/contract/feed.py)
is written. It never fails the job: when it cannot be written, the claims are left in place so
the job looks like an interrupted commit, and the next tick's repair writes the
manifest and the record again (a job may so appear twice in the feed; never zero).
"""

from __future__ import annotations

import asyncio
import json

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.contract.feed import build_feed_record
from handlers.contract.keys import JobRef
from handlers.jobs.claims import delete_claims
from handlers.jobs.retry import with_storage_retries
from handlers.jobs.webhooks import notify_in_background
from infra.storage.bucket import Bucket
from infra.storage.errors import UnsafeKeyError
from infra.text import one_line

log: FilteringBoundLogger = structlog.get_logger(__name__)
_DELETE_CONCURRENCY = 4


async def current_etag(bucket: Bucket, key: str) -> str | None:
    """The input's current ETag from a one-key LIST (no HEAD: works with list-only IAM)."""
    listing = await with_storage_retries(lambda: bucket.list(key))
    for obj in listing.objects:
        if obj.key == key:
            return obj.etag
    return None


async def discard_outputs(bucket: Bucket, keys: list[str]) -> None:
    """Best effort: delete the outputs of an attempt that will not publish them.

    Only an attempt that never won the fence calls this (superseded, fenced, lease
    lost, failed before its commit). Its keys are its own (``<job hash>-<attempt>/``,
    handlers/contract/keys.py), so no other attempt's or version's files can go. A
    delete that fails leaves an unreferenced file behind, never a broken manifest.
    """
    if not keys:
        return
    limit = asyncio.Semaphore(_DELETE_CONCURRENCY)

    async def delete_one(key: str) -> bool:
        async with limit:
            try:
                await bucket.delete(key)
            except Exception as exc:  # cleanup must never turn into the job's error
                log.warning("output_not_deleted", output=key, error=one_line(exc))
                return False
            return True

    deleted = sum(await asyncio.gather(*(delete_one(k) for k in keys)))
    log.info("outputs_discarded", deleted=deleted, of=len(keys))


async def publish_manifest(
    bucket: Bucket, ref: JobRef, manifest_bytes: bytes, failed: bool
) -> bool:
    """Write manifest.json (and the failed index) from a committed job.

    Skips the manifest when the input has since been replaced by new bytes, so an
    old version finishing late never overwrites the newer version's manifest.
    Returns whether the manifest was written.
    """
    written = False
    if not ref.manifest_key_fits():
        # The result is kept only in the done marker.
        log.error("manifest_key_too_long", done_key=ref.done_key)
    elif await current_etag(bucket, ref.input_key) in (ref.etag, None):
        try:
            await with_storage_retries(
                lambda: bucket.put_bytes(
                    ref.manifest_key, manifest_bytes, content_type="application/json"
                )
            )
            written = True
        except UnsafeKeyError as exc:
            # Refused for good (a symlink where the manifest goes, in a folder bucket):
            # the result stays in the done marker and `status` counts it missing.
            log.error("manifest_not_writable", done_key=ref.done_key, error=one_line(exc))
    else:
        log.info("manifest_skipped_input_replaced")
    if failed:
        await with_storage_retries(lambda: bucket.put_bytes(ref.failed_index_key, b"{}"))
    return written


async def write_feed_record(bucket: Bucket, ref: JobRef, *, failed: bool) -> str:
    """Write the record now; returns its key. Raises BucketError when storage fails."""
    # The time is taken just before the PUT so that the gap between a record's
    # timestamp and the moment it becomes visible is one PUT (plus retries).
    key, body = build_feed_record(ref, failed=failed)
    await with_storage_retries(lambda: bucket.put_bytes(key, body, content_type="application/json"))
    return key


async def record_completion(bucket: Bucket, ref: JobRef, *, failed: bool) -> bool:
    """Write the job's feed record; False (logged, never raised) when storage failed."""
    try:
        key = await write_feed_record(bucket, ref, failed=failed)
    except Exception as exc:  # after the fence nothing may fail the job
        # The claims stay, so the next tick's repair writes the record (and manifest) again.
        log.error("feed_record_not_written", error=one_line(exc))
        return False
    log.debug("feed_record_written", feed_key=key)
    return True


async def _publish_and_clean(
    bucket: Bucket, ref: JobRef, manifest_bytes: bytes, failed: bool
) -> None:
    written = await publish_manifest(bucket, ref, manifest_bytes, failed)
    # No manifest (input replaced, key too long): nothing for a consumer to fetch.
    if written and not await record_completion(bucket, ref, failed=failed):
        return
    await delete_claims(bucket, ref)


async def commit(
    bucket: Bucket,
    ref: JobRef,
    manifest_bytes: bytes,
    *,
    failed: bool,
    notify_url: str | None = None,
) -> bool:
    """Fence then publish. False means another attempt already committed this job.

    A won commit starts the route's webhook (``notify_url``) in the background;
    it never fails the job, and the caller drains pending deliveries before exit.
    """
    won = await with_storage_retries(lambda: bucket.create_if_absent(ref.done_key, manifest_bytes))
    if not won:
        return False
    await _publish_and_clean(bucket, ref, manifest_bytes, failed)
    notify_in_background(bucket, ref, manifest_bytes, notify_url)
    return True


async def repair(bucket: Bucket, ref: JobRef) -> None:
    """A done marker beside a stale claim: the committer died before finishing."""
    body = await with_storage_retries(lambda: bucket.get_bytes(ref.done_key))
    failed = json.loads(body).get("status") == "failed"
    await _publish_and_clean(bucket, ref, body, failed)
