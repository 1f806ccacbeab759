"""Bucket.list(prefix, start_after=...) on both backends: S3's StartAfter semantics."""

from __future__ import annotations

import asyncio

from infra.storage.bucket import Bucket
from infra.storage.s3 import S3Bucket

KEYS = [
    "feed/a",
    "feed/b",
    "feed/b0",
    "feed/c-1",  # '-' sorts before '/': S3 order is not folder order
    "feed/c/1",
    "feed/c/2",
    "feed/d",
    "feed/é",  # past every ASCII key: UTF-8 byte order is code-point order
    "other/z",
]


async def _fill(bucket: Bucket) -> None:
    await asyncio.gather(*(bucket.put_bytes(k, k.encode()) for k in KEYS))


async def _keys(bucket: Bucket, prefix: str, start_after: str | None) -> list[str]:
    return [o.key for o in (await bucket.list(prefix, start_after=start_after)).objects]


def test_start_after_lists_only_later_keys(bucket: Bucket) -> None:
    async def scenario() -> None:
        await _fill(bucket)
        feed = [k for k in KEYS if k.startswith("feed/")]
        assert await _keys(bucket, "feed/", None) == feed
        # Resuming from every listed key, and from points between keys, misses nothing.
        between = ["feed/", "feed/b/", "feed/c", "feed/c!", "feed/c-", "feed/c/", "feed/c/15", "~"]
        for cursor in [*feed, *between]:
            assert await _keys(bucket, "feed/", cursor) == [k for k in feed if k > cursor], cursor
        # A cursor before the prefix lists all of it; the prefix still bounds the result.
        assert await _keys(bucket, "feed/", "a") == feed
        assert await _keys(bucket, "", "feed/é") == ["other/z"]
        assert await _keys(bucket, "feed/", "") == feed  # empty means "from the start"
        await bucket.close()

    asyncio.run(scenario())


def test_start_after_pages_past_1000_keys(s3_bucket: S3Bucket) -> None:
    """StartAfter combines with pagination (S3 pages of 1,000; a folder has no pages)."""
    bucket = s3_bucket

    async def scenario() -> None:
        keys = [f"many/{i:05d}" for i in range(1203)]
        sem = asyncio.Semaphore(32)

        async def put(k: str) -> None:
            async with sem:
                await bucket.put_bytes(k, b"x")

        await asyncio.gather(*(put(k) for k in keys))
        listing = await bucket.list("many/", start_after=keys[100])
        assert [o.key for o in listing.objects] == keys[101:]
        assert listing.requests == 2  # pages of 1,000 after the cursor
        await bucket.close()

    asyncio.run(scenario())
