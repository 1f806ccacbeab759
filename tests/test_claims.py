"""handlers/jobs/claims.py: every claim-family write, on the folder bucket and on SeaweedFS.

Key names and bodies are pinned literally here: watchers of different versions
share a bucket, and watcher/state.py reads these keys back.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from handlers.contract.keys import ClaimKind, JobRef, parse_claim_key
from handlers.jobs.claims import (
    claim_body,
    create_claim,
    delete_claims,
    drop_claim,
    record_failure,
    release_claim,
    reset_job,
    write_heartbeat,
)
from infra.storage.bucket import Bucket
from infra.storage.errors import TransientStorageError
from infra.storage.local import LocalFolderBucket

T = TypeVar("T")
REF = JobRef("count", "set 1/a.bin", "e1")
PREFIX = "_dropgpu/claims/count/set 1/a.bin@e1/"
# Its job id starts like REF's: cleaning REF up must leave it alone.
OTHER = JobRef("count", "set 1/a.bin", "e10")
OWNER = f"{socket.gethostname()}:{os.getpid()}"


def arun(bucket: Bucket, coro: Awaitable[T]) -> T:
    """Run in a fresh loop and close the bucket there (S3 clients are bound to their loop)."""

    async def main() -> T:
        try:
            return await coro
        finally:
            await bucket.close()

    return asyncio.run(main())


async def keys(bucket: Bucket, prefix: str = "_dropgpu/") -> list[str]:
    return [o.key for o in (await bucket.list(prefix)).objects]


async def body(bucket: Bucket, key: str) -> dict[str, Any]:
    return json.loads(await bucket.get_bytes(key))


def test_claim_body_names_its_writer_first() -> None:
    data = json.loads(claim_body(phase="claimed", note="ü"))
    assert list(data) == ["owner", "updated_at", "phase", "note"]
    assert data["owner"] == OWNER and data["updated_at"].endswith("Z")
    assert "ü".encode() in claim_body(note="ü")  # UTF-8, not \\u escapes


def test_create_claim_is_won_once(bucket: Bucket) -> None:
    async def scenario() -> None:
        when = "2025-01-02T03:04:05.678Z"
        assert await create_claim(bucket, REF, 1, claimed_at=when) is True
        assert await create_claim(bucket, REF, 1, claimed_at="later") is False
        assert await keys(bucket) == [f"{PREFIX}attempt-1"]
        data = await body(bucket, f"{PREFIX}attempt-1")
        assert data.pop("updated_at").endswith("Z")
        assert data == {
            "owner": OWNER,
            "phase": "claimed",
            "progress": 0.0,
            "job_id": "count/set 1/a.bin@e1",
            "input_key": "inputs/count/set 1/a.bin",
            "attempt": 1,
            "claimed_at": when,  # the winner's body stays
        }
        parsed = parse_claim_key(f"{PREFIX}attempt-1")
        assert parsed is not None and parsed.kind == ClaimKind.CLAIM and parsed.attempt == 1

    arun(bucket, scenario())


def test_heartbeat_rewrites_the_claim(bucket: Bucket) -> None:
    async def scenario() -> None:
        await create_claim(bucket, REF, 2, claimed_at="t")
        info = {"job_id": REF.job_id, "input_key": REF.input_key, "attempt": 2}
        await write_heartbeat(bucket, REF.claim_key(2), phase="process", progress=0.25, **info)
        assert await keys(bucket) == [f"{PREFIX}attempt-2"]
        data = await body(bucket, f"{PREFIX}attempt-2")
        assert data["owner"] == OWNER
        assert {k: data[k] for k in ("phase", "progress", "attempt")} == {
            "phase": "process",
            "progress": 0.25,
            "attempt": 2,
        }
        assert "claimed_at" not in data  # a rewrite, not a merge

    arun(bucket, scenario())


def test_failure_record_carries_its_retry_time(bucket: Bucket) -> None:
    async def scenario() -> None:
        await record_failure(bucket, REF, 1, message="disk full ü", retry_at_ms=1_700_000_000_123)
        key = f"{PREFIX}attempt-1.failed-1700000000123"
        assert await keys(bucket) == [key]
        raw = await bucket.get_bytes(key)
        assert json.loads(raw) == {
            "kind": "transient",
            "message": "disk full ü",
            "attempt": 1,
            "retry_at": "2023-11-14T22:13:20.123Z",
        }
        assert "ü".encode() in raw
        parsed = parse_claim_key(key)
        assert parsed is not None and parsed.kind == ClaimKind.FAILED
        assert parsed.retry_at_ms == 1_700_000_000_123
        # Create-if-absent: a second record for the same time does not replace the first.
        await record_failure(bucket, REF, 1, message="other", retry_at_ms=1_700_000_000_123)
        assert (await body(bucket, key))["message"] == "disk full ü"

    arun(bucket, scenario())


def test_release_writes_a_released_record_once(bucket: Bucket) -> None:
    async def scenario() -> None:
        await create_claim(bucket, REF, 3, claimed_at="t")
        assert await release_claim(bucket, REF, 3) is True
        key = f"{PREFIX}attempt-3.released"
        first = await body(bucket, key)
        assert first["owner"] == OWNER and first["released_at"].endswith("Z")
        assert list(first) == ["owner", "updated_at", "released_at"]
        # Released twice (two callers): still in place, the first record kept.
        assert await release_claim(bucket, REF, 3) is True
        assert await body(bucket, key) == first
        assert await keys(bucket) == [f"{PREFIX}attempt-3", key]
        parsed = parse_claim_key(key)
        assert parsed is not None and parsed.kind == ClaimKind.RELEASED

    arun(bucket, scenario())


class _RefusingBucket(LocalFolderBucket):
    """A folder bucket whose creates and deletes fail as a storage outage would."""

    async def create_if_absent(self, key: str, body: bytes, **kw: Any) -> bool:
        raise TransientStorageError("503 Slow Down")

    async def delete(self, key: str) -> None:
        raise TransientStorageError("503 Slow Down")


def test_release_and_drop_never_raise_when_storage_refuses(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _RefusingBucket(tmp_path) as bucket:
            assert await release_claim(bucket, REF, 1) is False  # it expires with its lease
            await drop_claim(bucket, REF.claim_key(1))  # logged, not raised

    asyncio.run(scenario())


async def _job_keys(bucket: Bucket, ref: JobRef) -> None:
    await create_claim(bucket, ref, 1, claimed_at="t")
    await record_failure(bucket, ref, 1, message="m", retry_at_ms=1)
    await create_claim(bucket, ref, 2, claimed_at="t")
    await release_claim(bucket, ref, 2)


def test_drop_claim_deletes_that_claim_only(bucket: Bucket) -> None:
    async def scenario() -> None:
        await _job_keys(bucket, REF)
        await drop_claim(bucket, REF.claim_key(2))
        assert await keys(bucket) == [
            f"{PREFIX}attempt-1",
            f"{PREFIX}attempt-1.failed-1",
            f"{PREFIX}attempt-2.released",
        ]
        await drop_claim(bucket, REF.claim_key(2))  # already gone: not an error

    arun(bucket, scenario())


def test_delete_claims_cleans_up_one_job(bucket: Bucket) -> None:
    async def scenario() -> None:
        await _job_keys(bucket, REF)
        await _job_keys(bucket, OTHER)
        await delete_claims(bucket, REF)
        assert await keys(bucket, PREFIX) == []
        assert len(await keys(bucket, OTHER.claims_prefix)) == 4

    arun(bucket, scenario())


def test_reset_removes_claims_failed_index_and_done_marker_last(bucket: Bucket) -> None:
    async def scenario() -> None:
        for ref in (REF, OTHER):
            await _job_keys(bucket, ref)
            await bucket.put_bytes(ref.failed_index_key, b"{}")
            await bucket.create_if_absent(ref.done_key, b'{"status": "failed"}')
        deleted: list[str] = []
        real_delete = bucket.delete

        async def recording_delete(key: str) -> None:
            deleted.append(key)
            await real_delete(key)

        bucket.delete = recording_delete  # type: ignore[method-assign]
        await reset_job(bucket, REF)

        assert deleted[-1] == "_dropgpu/done/count/set 1/a.bin@e1"  # until then, still done
        assert "_dropgpu/failed/count/set 1/a.bin@e1" in deleted
        remaining = await keys(bucket)
        # Only the reset marker is left: it outranks the done index until the rerun commits.
        left = [k for k in remaining if REF.job_id + "/" in k or k.endswith(REF.job_id)]
        assert left == [REF.reset_key]
        assert OTHER.done_key in remaining and OTHER.failed_index_key in remaining
        assert len(await keys(bucket, OTHER.claims_prefix)) == 4

    arun(bucket, scenario())
