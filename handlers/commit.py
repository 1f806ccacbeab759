"""Ending a job (DESIGN §5.3): fence, manifest, failed index, claim cleanup.

Used by the job runner on success/failure and by the tick for give-ups and for
repairing a commit that crashed between the fence and the manifest.
"""

from __future__ import annotations

import json

import structlog

from handlers.layout import JobRef
from handlers.storage_retry import with_storage_retries
from infra.bucket import Bucket

log = structlog.get_logger(__name__)


async def current_etag(bucket: Bucket, key: str) -> str | None:
    """The input's current ETag from a one-key LIST (no HEAD: works with list-only IAM)."""
    listing = await with_storage_retries(lambda: bucket.list(key))
    for obj in listing.objects:
        if obj.key == key:
            return obj.etag
    return None


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
        log.error(
            "manifest key too long; result kept only in the done marker",
            route=ref.route,
            key=ref.input_key[:200],
            done_key=ref.done_key,
        )
    elif await current_etag(bucket, ref.input_key) in (ref.etag, None):
        await with_storage_retries(
            lambda: bucket.put_bytes(
                ref.manifest_key, manifest_bytes, content_type="application/json"
            )
        )
        written = True
    else:
        log.info("input replaced by newer bytes; not overwriting its manifest", key=ref.input_key)
    if failed:
        await with_storage_retries(lambda: bucket.put_bytes(ref.failed_index_key, b"{}"))
    return written


async def delete_claims(bucket: Bucket, ref: JobRef) -> None:
    listing = await with_storage_retries(lambda: bucket.list(ref.claims_prefix))
    for obj in listing.objects:
        await with_storage_retries(lambda key=obj.key: bucket.delete(key))


async def commit(bucket: Bucket, ref: JobRef, manifest_bytes: bytes, *, failed: bool) -> bool:
    """Fence then publish. False means another attempt already committed this job."""
    won = await with_storage_retries(lambda: bucket.create_if_absent(ref.done_key, manifest_bytes))
    if not won:
        return False
    await publish_manifest(bucket, ref, manifest_bytes, failed)
    await delete_claims(bucket, ref)
    return True


async def repair(bucket: Bucket, ref: JobRef) -> None:
    """A done marker beside a stale claim: the committer died before finishing."""
    body = await with_storage_retries(lambda: bucket.get_bytes(ref.done_key))
    failed = json.loads(body).get("status") == "failed"
    await publish_manifest(bucket, ref, body, failed)
    await delete_claims(bucket, ref)
