"""Server-side copy, conditional delete and partitioned listing, on both backends.

These are what ``after_success`` (archive/delete of inputs) and the done index's
tick stand on: a copy never takes a newer version than the claimed one, a delete
never removes one, and a partitioned listing lists exactly what ``list`` lists.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from infra.s3_server import SeaweedS3Server
from infra.storage.bucket import Bucket
from infra.storage.errors import ObjectNotFound, PreconditionFailed
from infra.storage.local import LocalFolderBucket
from infra.storage.s3 import MiB, S3Bucket

T = TypeVar("T")


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def run(bucket: Bucket, coro: Coroutine[Any, Any, T]) -> T:
    """A scenario in its own loop, closing the bucket's client inside it."""

    async def main() -> T:
        try:
            return await coro
        finally:
            await bucket.close()

    return asyncio.run(main())


def test_copy_takes_exactly_the_claimed_version(bucket: Bucket) -> None:
    async def scenario() -> None:
        etag = await bucket.put_bytes("inputs/r/clip.mp4", b"version one")
        copied = await bucket.copy("inputs/r/clip.mp4", "archive/r/clip.mp4", if_match=etag)
        assert copied == md5(b"version one")
        assert await bucket.get_bytes("archive/r/clip.mp4") == b"version one"
        # A newer upload replaced the claimed version: the copy refuses, nothing changes.
        await bucket.put_bytes("inputs/r/clip.mp4", b"version two")
        with pytest.raises(PreconditionFailed):
            await bucket.copy("inputs/r/clip.mp4", "archive/r/clip.mp4", if_match=etag)
        assert await bucket.get_bytes("archive/r/clip.mp4") == b"version one"
        with pytest.raises(ObjectNotFound):
            await bucket.copy("inputs/r/gone.mp4", "archive/r/gone.mp4", if_match=etag)

    run(bucket, scenario())


def test_delete_if_match_never_removes_another_version(bucket: Bucket) -> None:
    async def scenario() -> None:
        old = await bucket.put_bytes("inputs/r/a.mp4", b"old")
        await bucket.put_bytes("inputs/r/a.mp4", b"new")
        assert await bucket.delete_if_match("inputs/r/a.mp4", old) is False
        assert await bucket.get_bytes("inputs/r/a.mp4") == b"new"
        assert await bucket.delete_if_match("inputs/r/a.mp4", md5(b"new")) is True
        with pytest.raises(ObjectNotFound):
            await bucket.get_bytes("inputs/r/a.mp4")
        # Idempotent: the version is gone already.
        assert await bucket.delete_if_match("inputs/r/a.mp4", md5(b"new")) is True
        listing = await bucket.list("inputs/r/")
        assert listing.objects == []

    run(bucket, scenario())


def test_folder_delete_if_match_keeps_a_mismatched_file_byte_for_byte(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    (root / "inputs" / "r").mkdir(parents=True)
    path = root / "inputs" / "r" / "a.mp4"
    path.write_bytes(b"user bytes")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    bucket = LocalFolderBucket(root)
    assert run(bucket, bucket.delete_if_match("inputs/r/a.mp4", md5(b"other"))) is False
    assert path.read_bytes() == b"user bytes"
    assert path.stat().st_mtime_ns == 1_000_000_000  # the settle clock is not reset
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.mp4"]  # nothing left aside


def test_multipart_copy_of_a_large_object(s3_server: SeaweedS3Server, s3_bucket_name: str) -> None:
    bucket = S3Bucket(
        s3_bucket_name,
        endpoint_url=s3_server.endpoint_url,
        part_size=5 * MiB,
        copy_part_threshold=5 * MiB,
    )
    body = os.urandom(12 * MiB + 123)

    async def scenario() -> None:
        etag = await bucket.put_bytes("inputs/r/big.mov", body)
        before = bucket.stats.counts["copy"]
        await bucket.copy("inputs/r/big.mov", "archive/r/big.mov", if_match=etag)
        assert bucket.stats.counts["copy"] - before == 3  # three UploadPartCopy ranges
        assert await bucket.get_bytes("archive/r/big.mov") == body
        await bucket.put_bytes("inputs/r/big.mov", b"replaced")
        with pytest.raises(PreconditionFailed):
            await bucket.copy("inputs/r/big.mov", "archive/r/big2.mov", if_match=etag)
        assert (await bucket.list("archive/r/big2.mov")).objects == []

    run(bucket, scenario())


def test_list_tree_lists_what_list_lists(bucket: Bucket) -> None:
    keys = [
        f"inputs/r/day-{d}/cam-{c}/clip-{i}.mp4"
        for d in range(3)
        for c in range(2)
        for i in range(3)
    ]
    # Names that sort between a folder and its neighbours ("day-1 (copy)/" < "day-1/").
    keys += ["inputs/r/top.mp4", "inputs/r/day-1/loose.mp4", "inputs/r/day-1 (copy)/x.mp4"]
    keys += ["inputs/r/day-1.mp4"]
    # A folder named like a neighbour plus a character below "/": SeaweedFS lists
    # "day-1/" before "day-1-b/", byte order the other way round.
    keys += ["inputs/r/day-1-b/y.mp4", "inputs/r/day/z.mp4"]

    async def scenario() -> None:
        await asyncio.gather(*(bucket.put_bytes(k, k.encode()) for k in keys))
        whole = await bucket.list("inputs/r/")
        tree = await bucket.list_tree("inputs/r/", concurrency=4)
        assert [o.key for o in tree.objects] == [o.key for o in whole.objects] == sorted(keys)
        assert [o.etag for o in tree.objects] == [o.etag for o in whole.objects]
        # At most one partial page more per range (4) plus the delimiter page.
        assert tree.requests <= whole.requests + 4 + 1
        # Many folders: still one range per worker, not one LIST per folder.
        many = await bucket.list_tree("inputs/r/", concurrency=2)
        assert [o.key for o in many.objects] == sorted(keys)
        assert many.requests <= whole.requests + 2 + 1
        # A single sub-folder is descended into.
        deep = await bucket.list_tree("inputs/r/day-2/", concurrency=4)
        assert [o.key for o in deep.objects] == sorted(k for k in keys if "/day-2/" in k)

    run(bucket, scenario())


def test_list_tree_ranges_cost_what_a_sequential_scan_costs(bucket: Bucket) -> None:
    # 10 folders of 300 keys, 5 ranges of 600 keys: each range is one page. A range
    # that started its listing at the first folder would cost 1+2+2+3+3 pages.
    keys = [f"inputs/r/batch-{d:03d}/clip-{i:04d}.bin" for d in range(10) for i in range(300)]

    async def scenario() -> None:
        for start in range(0, len(keys), 500):
            await asyncio.gather(*(bucket.put_bytes(k, b"x") for k in keys[start : start + 500]))
        whole = await bucket.list("inputs/r/")
        tree = await bucket.list_tree("inputs/r/", concurrency=5)
        assert [o.key for o in tree.objects] == [o.key for o in whole.objects] == keys
        assert tree.requests <= whole.requests + 5 + 1

    run(bucket, scenario())


def test_list_range_stops_at_end_before(bucket: Bucket) -> None:
    async def scenario() -> None:
        await asyncio.gather(*(bucket.put_bytes(f"feed/{i:04d}", b"x") for i in range(30)))
        got = await bucket.list_range("feed/", start_after="feed/0004", end_before="feed/0010")
        assert [o.key for o in got.objects] == [f"feed/{i:04d}" for i in range(5, 10)]

    run(bucket, scenario())
