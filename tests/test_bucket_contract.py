"""The Bucket contract, run against the local folder and a real SeaweedFS S3 server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import socket
import sqlite3
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from botocore import exceptions as bce

from infra.s3_server import SeaweedS3Server
from infra.storage.bucket import Bucket
from infra.storage.errors import (
    BucketConfigError,
    BucketError,
    ObjectNotFound,
    PreconditionFailed,
    TransientStorageError,
    UnsafeKeyError,
)
from infra.storage.local import LocalFolderBucket
from infra.storage.s3 import MiB, S3Bucket
from infra.storage.url import open_bucket
from tests.conftest import TEST_AWS_ENV

T = TypeVar("T")


def arun(bucket: Bucket, coro: Awaitable[T]) -> T:
    """Run a scenario in a fresh loop and close the bucket's client inside that loop."""

    async def main() -> T:
        try:
            return await coro
        finally:
            await bucket.close()

    return asyncio.run(main())


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- basic round trip and listing ---------------------------------------------------


def test_put_get_list_roundtrip(bucket: Bucket, tmp_path: Path) -> None:
    async def scenario() -> None:
        etag = await bucket.put_bytes("outputs/r/a.txt", b"hello", content_type="text/plain")
        assert etag == md5(b"hello")  # S3 single-part ETag semantics on both backends
        listing = await bucket.list("outputs/")
        [info] = listing.objects
        assert (info.key, info.etag, info.size) == ("outputs/r/a.txt", etag, 5)
        assert info.last_modified.tzinfo is not None
        assert info.last_modified.utcoffset() == timedelta(0)
        assert await bucket.get_bytes("outputs/r/a.txt") == b"hello"
        got = await bucket.get_to_file("outputs/r/a.txt", tmp_path / "dl" / "a.txt")
        assert (tmp_path / "dl" / "a.txt").read_bytes() == b"hello"
        assert (got.key, got.etag, got.size) == ("outputs/r/a.txt", etag, 5)
        # Replacing returns the new ETag and the listing follows.
        etag2 = await bucket.put_bytes("outputs/r/a.txt", b"hello again")
        assert etag2 == md5(b"hello again")
        assert [o.etag for o in (await bucket.list("outputs/r/a.txt")).objects] == [etag2]

    arun(bucket, scenario())


def test_list_prefix_filtering(bucket: Bucket) -> None:
    keys = [
        "inputs/stems/a.wav",
        "inputs/stems/b/c.wav",
        "inputs/stemsx/d.wav",
        "inputs/st",
        "outputs/stems/a.wav/manifest.json",
    ]

    async def scenario() -> None:
        await asyncio.gather(*(bucket.put_bytes(k, k.encode()) for k in keys))

        async def keys_under(prefix: str) -> list[str]:
            return [o.key for o in (await bucket.list(prefix)).objects]

        assert await keys_under("inputs/stems/") == ["inputs/stems/a.wav", "inputs/stems/b/c.wav"]
        # A prefix is a string prefix, not a folder: "stems" also matches "stemsx/".
        assert await keys_under("inputs/stems") == [
            "inputs/stems/a.wav",
            "inputs/stems/b/c.wav",
            "inputs/stemsx/d.wav",
        ]
        assert await keys_under("inputs/st") == sorted(k for k in keys if k.startswith("inputs/"))
        assert await keys_under("inputs/stems/a") == ["inputs/stems/a.wav"]
        assert await keys_under("") == sorted(keys)
        assert await keys_under("nothing/") == []
        assert await keys_under("inputs/stems/a.wav/") == []
        # A full key as prefix finds exactly that object (used to look up one key).
        assert await keys_under("inputs/stems/b/c.wav") == ["inputs/stems/b/c.wav"]

    arun(bucket, scenario())


def test_list_more_than_one_page(bucket: Bucket) -> None:
    n = 1100
    keys = [f"many/{i:05d}.bin" for i in range(n)]

    async def scenario() -> None:
        sem = asyncio.Semaphore(64)

        async def put(k: str) -> None:
            async with sem:
                await bucket.put_bytes(k, b"x", content_type="application/octet-stream")

        await asyncio.gather(*(put(k) for k in keys), bucket.put_bytes("manz", b"outside"))
        listing = await bucket.list("many/")
        assert [o.key for o in listing.objects] == keys
        assert all(o.etag == md5(b"x") and o.size == 1 for o in listing.objects)
        if isinstance(bucket, S3Bucket):
            assert listing.requests >= 2  # ListObjectsV2 returns at most 1000 keys a page
            assert bucket.stats.counts["list"] == listing.requests

    arun(bucket, scenario())


def _long_key() -> str:
    """A ~900-byte UTF-8 key whose segments each fit a filesystem name (255 bytes)."""
    seg = "é" * 100 + "x" * 40  # 240 bytes
    key = "inputs/long/" + "/".join([seg] * 3) + "/" + "ü" * 80 + " end.wav"
    assert 880 <= len(key.encode()) <= 1000, len(key.encode())
    return key


def test_unicode_spaces_and_long_keys_roundtrip(bucket: Bucket, tmp_path: Path) -> None:
    keys = [
        "inputs/stems/live/set 1.wav",
        "inputs/karaoke/日本語/歌 ♫ (live).flac",
        "inputs/proxy/émoji 🎵/naïve café.mp4",
        "inputs/frames/a+b=c&d%20e#f?.mov",
        _long_key(),
    ]

    async def scenario() -> None:
        for i, k in enumerate(keys):
            await bucket.put_bytes(k, f"body {i}".encode())
        listing = await bucket.list("inputs/")
        assert [o.key for o in listing.objects] == sorted(keys)
        for i, k in enumerate(keys):
            assert await bucket.get_bytes(k) == f"body {i}".encode()
            info = await bucket.get_to_file(
                k, tmp_path / f"{i}.bin", if_match=md5(f"body {i}".encode())
            )
            assert info.key == k
        assert [o.key for o in (await bucket.list("inputs/karaoke/日本語/")).objects] == [keys[1]]

    arun(bucket, scenario())


def test_sort_order_is_utf8_byte_order(bucket: Bucket) -> None:
    keys = ["k/Z", "k/a", "k/é", "k/z", "k/€", "k/🎵", "k/ä"]

    async def scenario() -> None:
        await asyncio.gather(*(bucket.put_bytes(k, b"") for k in keys))
        listed = [o.key for o in (await bucket.list("k/")).objects]
        assert listed == sorted(keys, key=lambda k: k.encode("utf-8"))

    arun(bucket, scenario())


# -- conditional reads ------------------------------------------------------------------


def test_get_to_file_if_match(bucket: Bucket, tmp_path: Path) -> None:
    key = "inputs/vertical/clip.mp4"
    dest = tmp_path / "scratch" / "input.bin"

    async def scenario() -> None:
        v1 = await bucket.put_bytes(key, b"version one", content_type="video/mp4")
        info = await bucket.get_to_file(key, dest, if_match=v1)
        assert info.etag == v1 and dest.read_bytes() == b"version one"
        # Quoted ETags (as S3 puts them on the wire) are accepted too.
        await bucket.get_to_file(key, dest, if_match=f'"{v1}"')

        v2 = await bucket.put_bytes(key, b"version two", content_type="video/mp4")
        assert v2 != v1
        dest.unlink()
        with pytest.raises(PreconditionFailed):
            await bucket.get_to_file(key, dest, if_match=v1)
        assert not dest.exists()  # no partial or stale file is left behind
        assert (await bucket.get_to_file(key, dest, if_match=v2)).etag == v2
        assert dest.read_bytes() == b"version two"

    arun(bucket, scenario())


def test_missing_object(bucket: Bucket, tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(ObjectNotFound):
            await bucket.get_to_file("inputs/nope.wav", tmp_path / "x.bin")
        with pytest.raises(ObjectNotFound):
            await bucket.get_to_file("inputs/nope.wav", tmp_path / "x.bin", if_match="0" * 32)
        with pytest.raises(ObjectNotFound):
            await bucket.get_bytes("_dropgpu/done/nope")
        assert not (tmp_path / "x.bin").exists()

    arun(bucket, scenario())


# -- uploads ------------------------------------------------------------------------------


def test_put_file_single_and_multipart(bucket: Bucket, tmp_path: Path) -> None:
    if isinstance(bucket, S3Bucket):
        # Small threshold and parts (S3's 5 MiB minimum) so 12 MiB takes 3 parts.
        bucket = S3Bucket(
            bucket.name,
            endpoint_url=bucket.endpoint_url,
            multipart_threshold=5 * MiB,
            part_size=5 * MiB,
            max_concurrency=2,
        )
    big = tmp_path / "big.bin"
    data = os.urandom(12 * MiB + 12345)
    big.write_bytes(data)
    small = tmp_path / "small.bin"
    small.write_bytes(b"tiny" * 1000)

    async def scenario() -> None:
        etag_small = await bucket.put_file("outputs/p/small.bin", small, content_type="text/plain")
        assert etag_small == md5(small.read_bytes())
        etag = await bucket.put_file("outputs/p/big.bin", big, content_type="video/mp4")
        got = tmp_path / "got.bin"
        info = await bucket.get_to_file("outputs/p/big.bin", got, if_match=etag)
        assert info.size == len(data) and info.etag == etag
        assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(data).digest()
        listed = {o.key: o for o in (await bucket.list("outputs/p/")).objects}
        assert listed["outputs/p/big.bin"].etag == etag
        assert listed["outputs/p/big.bin"].size == len(data)
        if isinstance(bucket, S3Bucket):
            assert etag.endswith("-3")  # S3's multipart ETag: md5-of-md5s, dash, part count
            # create + 3 parts + complete
            assert bucket.stats.counts["multipart"] == 5
            assert bucket.stats.counts["put"] == 1
        else:
            assert etag == md5(data)

    arun(bucket, scenario())


def test_multipart_failure_aborts_upload(
    s3_server: SeaweedS3Server, s3_bucket_name: str, tmp_path: Path
) -> None:
    """A part that fails mid-upload aborts the upload: no orphan parts remain."""
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(11 * MiB))
    bucket = S3Bucket(
        s3_bucket_name,
        endpoint_url=s3_server.endpoint_url,
        multipart_threshold=5 * MiB,
        part_size=5 * MiB,
    )
    calls = 0
    real_call = bucket._call

    async def flaky_call(stat: str, op: str, key: str, method: str, **kw: Any) -> Any:
        nonlocal calls
        if method == "upload_part":
            calls += 1
            if calls == 2:
                raise BucketError("injected part failure")
        return await real_call(stat, op, key, method, **kw)

    bucket._call = flaky_call  # type: ignore[method-assign]

    async def scenario() -> None:
        with pytest.raises(BucketError, match="injected"):
            await bucket.put_file("outputs/x/f.bin", src, content_type="application/octet-stream")
        with pytest.raises(ObjectNotFound):
            await bucket.get_bytes("outputs/x/f.bin")

    arun(bucket, scenario())
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_bucket_name)
    assert uploads.get("Uploads", []) == []


# -- create-if-absent ---------------------------------------------------------------------


def test_create_if_absent_second_create_loses(bucket: Bucket) -> None:
    key = "_dropgpu/claims/job/attempt-1"

    async def scenario() -> None:
        assert await bucket.create_if_absent(key, b'{"owner": "first"}') is True
        assert await bucket.create_if_absent(key, b'{"owner": "second"}') is False
        assert await bucket.get_bytes(key) == b'{"owner": "first"}'
        # Once deleted, the key can be created again.
        await bucket.delete(key)
        assert await bucket.create_if_absent(key, b'{"owner": "third"}') is True
        assert await bucket.get_bytes(key) == b'{"owner": "third"}'

    arun(bucket, scenario())


def test_create_if_absent_concurrent_single_winner(bucket: Bucket) -> None:
    key = "_dropgpu/done/job-race"
    n = 16

    async def scenario() -> None:
        results = await asyncio.gather(
            *(bucket.create_if_absent(key, f'{{"owner": {i}}}'.encode()) for i in range(n))
        )
        assert sum(results) == 1, results
        winner = results.index(True)
        # The stored body is the winner's, complete.
        assert await bucket.get_bytes(key) == f'{{"owner": {winner}}}'.encode()

    arun(bucket, scenario())


def test_s3_create_retried_after_lost_response_still_wins(s3_bucket: S3Bucket) -> None:
    """botocore resends a PUT whose response was lost; the resend's 412 answers our own
    first write. create_if_absent must then report True (same bytes), and False when
    someone else's bytes are there."""
    bucket = s3_bucket
    real_call = bucket._call

    async def lost_response_call(stat: str, op: str, key: str, method: str, **kw: Any) -> Any:
        if kw.get("IfNoneMatch") == "*":
            with contextlib.suppress(PreconditionFailed):
                await real_call(stat, op, key, method, **kw)  # the write lands ...
            err = PreconditionFailed("412 on the resend")  # ... its resend sees 412
            err.retry_attempts = 1  # type: ignore[attr-defined]
            raise err
        return await real_call(stat, op, key, method, **kw)

    bucket._call = lost_response_call  # type: ignore[method-assign]

    async def scenario() -> None:
        assert await bucket.create_if_absent("_dropgpu/done/j", b'{"owner": "me"}') is True
        assert await bucket.create_if_absent("_dropgpu/done/j", b'{"owner": "other"}') is False

    arun(bucket, scenario())


def _create_in_process(root: str, key: str, worker: int, barrier: Any, out: Any) -> None:
    """Child process: wait for all, then race a few creates of one key."""

    async def main() -> list[bool]:
        b = LocalFolderBucket(Path(root))
        barrier.wait()
        return list(
            await asyncio.gather(
                *(b.create_if_absent(key, f"{worker}-{i}".encode()) for i in range(4))
            )
        )

    out.put((worker, asyncio.run(main())))


def test_local_create_if_absent_across_processes(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    root.mkdir()
    key = "_dropgpu/claims/job/attempt-1"
    n = 6
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_create_in_process, args=(str(root), key, w, barrier, out))
        for w in range(n)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    wins = [(w, i) for w, res in results.items() for i, won in enumerate(res) if won]
    assert len(wins) == 1, results
    (w, i) = wins[0]
    assert (root / key).read_bytes() == f"{w}-{i}".encode()
    # No temp files left behind by the losers.
    assert [p.name for p in (root / key).parent.iterdir()] == ["attempt-1"]


# -- delete --------------------------------------------------------------------------------


def test_delete_is_idempotent(bucket: Bucket) -> None:
    async def scenario() -> None:
        await bucket.put_bytes("_dropgpu/claims/j/attempt-1", b"{}")
        await bucket.delete("_dropgpu/claims/j/attempt-1")
        await bucket.delete("_dropgpu/claims/j/attempt-1")
        await bucket.delete("_dropgpu/never/existed")
        with pytest.raises(ObjectNotFound):
            await bucket.get_bytes("_dropgpu/claims/j/attempt-1")
        assert (await bucket.list("_dropgpu/")).objects == []

    arun(bucket, scenario())
    if isinstance(bucket, LocalFolderBucket):
        # Emptied folders go with their last object, like S3 prefixes; the root stays.
        assert not (bucket.root / "_dropgpu").exists()
        assert bucket.root.is_dir() and (bucket.root / "inputs").is_dir()


def test_server_time_is_close_to_now(bucket: Bucket) -> None:
    async def scenario() -> None:
        await bucket.put_bytes("outputs/t", b"t")
        before = datetime.now(UTC)
        listing = await bucket.list("outputs/")
        after = datetime.now(UTC)
        assert listing.server_time.tzinfo is not None
        # The HTTP Date header has 1 s resolution (truncated).
        assert before - timedelta(seconds=2) <= listing.server_time <= after + timedelta(seconds=2)
        [obj] = listing.objects
        assert abs(listing.server_time - obj.last_modified) < timedelta(seconds=5)
        # An empty listing still carries the server's time.
        empty = await bucket.list("nothing-here/")
        assert abs(empty.server_time - before) < timedelta(seconds=5)

    arun(bucket, scenario())


# -- local folder specifics -----------------------------------------------------------------

UNSAFE_KEYS = [
    "",
    "../escape",
    "inputs/../../escape",
    "inputs/./x",
    "/etc/passwd",
    "inputs//double",
    "inputs/trailing/",
    "inputs\\windows\\path",
    "inputs/nul\x00byte",
    "inputs/new\nline",
    "inputs/tab\there",
    "inputs/del\x7f",
    ".dropgpu/etag-cache.sqlite3",
    "inputs/.x.dropgpu-tmp-0123456789abcdef",
    "inputs/" + "n" * 256,
]


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_local_rejects_unsafe_keys(tmp_path: Path, key: str) -> None:
    root = tmp_path / "bucket"
    root.mkdir()
    bucket = LocalFolderBucket(root)

    async def scenario() -> None:
        with pytest.raises(UnsafeKeyError):
            await bucket.put_bytes(key, b"x")
        with pytest.raises(UnsafeKeyError):
            await bucket.create_if_absent(key, b"x")
        with pytest.raises(UnsafeKeyError):
            await bucket.get_bytes(key)
        with pytest.raises(UnsafeKeyError):
            await bucket.get_to_file(key, tmp_path / "out")
        with pytest.raises(UnsafeKeyError):
            await bucket.delete(key)
        src = tmp_path / "src"
        src.write_bytes(b"x")
        with pytest.raises(UnsafeKeyError):
            await bucket.put_file(key, src, content_type="text/plain")

    arun(bucket, scenario())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bucket", "src"]
    assert [p.name for p in root.iterdir() if p.name != ".dropgpu"] == []


def test_local_rejects_unsafe_prefixes_and_symlink_escapes(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    (root / "inputs").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "inputs" / "link").symlink_to(outside, target_is_directory=True)
    (root / "inputs" / "file-link").symlink_to(outside / "secret.txt")
    bucket = LocalFolderBucket(root)

    async def scenario() -> None:
        for prefix in ("../", "/etc/", "inputs/../../", "a\\b/", "inputs/x\x00/"):
            with pytest.raises(UnsafeKeyError):
                await bucket.list(prefix)
        with pytest.raises(UnsafeKeyError):
            await bucket.get_bytes("inputs/link/secret.txt")
        with pytest.raises(UnsafeKeyError):
            await bucket.put_bytes("inputs/link/new.txt", b"x")
        with pytest.raises(UnsafeKeyError):
            await bucket.get_bytes("inputs/file-link")
        # A listing through the folder link is empty and says why (issue 11 point 5:
        # one bad entry, even the prefix itself, never fails a listing).
        through = await bucket.list("inputs/link/")
        assert through.objects == []
        assert [(e.name, e.kind) for e in through.skipped] == [("inputs/link/", "symlink")]
        # Listing neither follows the directory link nor shows the escaping file link,
        # and it names both.
        everything = await bucket.list("")
        assert everything.objects == []
        assert [(e.name, e.kind) for e in everything.skipped] == [
            ("inputs/file-link", "symlink"),
            ("inputs/link", "symlink"),
        ]
        assert "outside the bucket" in everything.skipped[0].reason
        with pytest.raises(UnsafeKeyError, match="never deletes inputs"):
            await bucket.delete("inputs/anything.wav")

    arun(bucket, scenario())
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_local_listing_hides_temp_files_and_caches_etags(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    (root / "inputs" / "stems").mkdir(parents=True)
    bucket = LocalFolderBucket(root)
    song = root / "inputs" / "stems" / "song.wav"
    song.write_bytes(b"first take")
    # An in-flight write of ours (another process) and a folder marker are not objects.
    (root / "inputs" / "stems" / ".song2.wav.dropgpu-tmp-0123456789abcdef").write_bytes(b"half")
    (root / "inputs" / "stems" / "empty-folder").mkdir()

    async def scenario() -> None:
        first = (await bucket.list("inputs/")).objects
        assert [(o.key, o.etag) for o in first] == [("inputs/stems/song.wav", md5(b"first take"))]
        assert (root / ".dropgpu" / "etag-cache.sqlite3").is_file()
        # The cache answers the second listing (no re-hash) ...
        again = (await bucket.list("inputs/")).objects
        assert again == first
        # ... but a rewrite (new size/mtime/inode) is hashed again.
        tmp = song.with_name("replacement")
        tmp.write_bytes(b"second take, longer")
        os.replace(tmp, song)
        changed = (await bucket.list("inputs/")).objects
        assert changed[0].etag == md5(b"second take, longer")
        # The cache is disposable: garbage in its place must not break listings.
        for p in (root / ".dropgpu").iterdir():
            p.write_bytes(b"not a database")
        fresh = LocalFolderBucket(root)
        assert (await fresh.list("inputs/")).objects[0].etag == md5(b"second take, longer")
        # ... it was replaced by a working one.
        conn = sqlite3.connect(root / ".dropgpu" / "etag-cache.sqlite3")
        assert conn.execute("SELECT count(*) FROM etags").fetchone() == (1,)
        conn.close()

    arun(bucket, scenario())


def test_local_cache_hit_avoids_rehash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import infra.storage.etag_cache as lb

    root = tmp_path / "bucket"
    root.mkdir()
    for i in range(20):
        (root / f"f{i:02d}").write_bytes(b"data %d" % i)
    hashed: list[Path] = []
    real = lb.hash_stable

    def counting(path: Path) -> Any:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(lb, "hash_stable", counting)

    async def scenario() -> None:
        assert len((await LocalFolderBucket(root).list("")).objects) == 20
        assert len(hashed) == 20
        # A second process/instance shares the cache through the sqlite file.
        assert len((await LocalFolderBucket(root).list("")).objects) == 20
        assert len(hashed) == 20
        # Our own writes seed the cache too.
        b = LocalFolderBucket(root)
        await b.put_bytes("new", b"fresh")
        await b.list("")
        assert len(hashed) == 20

    asyncio.run(scenario())


def test_local_key_under_existing_file_is_a_clear_error(tmp_path: Path) -> None:
    bucket = LocalFolderBucket(tmp_path)

    async def scenario() -> None:
        await bucket.put_bytes("a", b"file")
        with pytest.raises(UnsafeKeyError, match="parent of it is a file"):
            await bucket.put_bytes("a/b", b"x")
        with pytest.raises(ObjectNotFound):
            await bucket.get_bytes("a/b")

    arun(bucket, scenario())


# -- S3 specifics -----------------------------------------------------------------------------


def test_s3_missing_bucket_is_a_config_error(s3_server: SeaweedS3Server) -> None:
    bucket = S3Bucket("no-such-bucket-dropgpu", endpoint_url=s3_server.endpoint_url)

    async def scenario() -> None:
        with pytest.raises(BucketConfigError, match="does not exist") as info:
            await bucket.list("inputs/")
        msg = str(info.value)
        assert "no-such-bucket-dropgpu" in msg and s3_server.endpoint_url in msg
        assert "--bucket" in msg
        # SeaweedFS answers a PUT into a missing bucket with 403 AccessDenied.
        with pytest.raises(BucketConfigError, match="no-such-bucket-dropgpu") as info:
            await bucket.put_bytes("x", b"x")
        for secret in (TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"], TEST_AWS_ENV["AWS_ACCESS_KEY_ID"]):
            assert secret not in str(info.value)

    arun(bucket, scenario())


def test_s3_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    bucket = S3Bucket("some-bucket", endpoint_url=endpoint)

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(BucketConfigError, match="cannot reach") as info:
            await bucket.list("inputs/")
        # No backoff retries before the endpoint has ever answered.
        assert time.monotonic() - started < 5
        assert endpoint in str(info.value) and "--endpoint-url" in str(info.value)
        assert TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in str(info.value)
        with pytest.raises(BucketConfigError):
            await bucket.get_to_file("k", tmp_path / "k")
        assert not (tmp_path / "k").exists()

    arun(bucket, scenario())


def test_s3_dot_segment_keys_are_refused_by_seaweedfs(s3_bucket: S3Bucket) -> None:
    """Recorded behaviour of SeaweedFS 4.48 (AWS S3 itself stores such keys verbatim).

    - keys with '.' or '..' segments: 400 InvalidRequest on PUT and GET;
    - '//' inside a key is collapsed ('a//b' is stored as 'a/b'), and a leading
      '/' is dropped: filer paths, not opaque keys.
    Our code must surface these as BucketError, never crash or touch other keys.
    """
    bucket = s3_bucket

    async def scenario() -> None:
        await bucket.put_bytes("a/b", b"original")
        for key in ("a/../b", "a/./b", "x/..", "../b"):
            with pytest.raises(BucketError) as info:
                await bucket.put_bytes(key, b"evil")
            assert not isinstance(info.value, BucketConfigError)
            with pytest.raises(BucketError):
                await bucket.get_bytes(key)
            with pytest.raises(BucketError):
                await bucket.create_if_absent(key, b"evil")
        assert await bucket.get_bytes("a/b") == b"original"
        # '//' collapses onto the single-slash key: an overwrite, not a new key.
        await bucket.put_bytes("c//d", b"double")
        assert [o.key for o in (await bucket.list("c/")).objects] == ["c/d"]
        assert await bucket.get_bytes("c/d") == b"double"

    arun(bucket, scenario())


def test_s3_server_time_comes_from_date_header(s3_bucket: S3Bucket) -> None:
    bucket = s3_bucket

    async def scenario() -> None:
        listing = await bucket.list("")
        # The Date header has whole seconds: a parsed header, not our clock.
        assert listing.server_time.microsecond == 0

    arun(bucket, scenario())


def test_bucket_is_reusable_across_event_loops(bucket: Bucket) -> None:
    """CLI code may call asyncio.run() more than once with one bucket object."""
    arun(bucket, bucket.put_bytes("loop/1", b"1"))
    arun(bucket, bucket.put_bytes("loop/2", b"2"))
    assert [o.key for o in arun(bucket, bucket.list("loop/")).objects] == ["loop/1", "loop/2"]


def test_s3_wrong_credentials_are_config_errors(tmp_path: Path) -> None:
    """With auth on (SeaweedFS takes its one key pair from its env), bad keys say what to fix."""
    key, secret = "dropgpu-real-key", "dropgpu-real-secret"
    with SeaweedS3Server(tmp_path / "auth-s3", credentials=(key, secret)) as server:
        server.create_bucket("authed")
        good = S3Bucket("authed", endpoint_url=server.endpoint_url)
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = key, secret
        try:
            assert arun(good, good.list("")).objects == []
            os.environ["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-value"
            bad_secret = S3Bucket("authed", endpoint_url=server.endpoint_url)
            with pytest.raises(BucketConfigError, match="AWS_SECRET_ACCESS_KEY") as info:
                arun(bad_secret, bad_secret.list(""))
            assert "wrong-secret-value" not in str(info.value)
            os.environ["AWS_ACCESS_KEY_ID"] = "unknown-key-id"
            bad_key = S3Bucket("authed", endpoint_url=server.endpoint_url)
            with pytest.raises(BucketConfigError, match="AWS_ACCESS_KEY_ID") as info:
                arun(bad_key, bad_key.put_bytes("x", b"x"))
            assert "wrong-secret-value" not in str(info.value)
        finally:
            os.environ.update(
                {k: TEST_AWS_ENV[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
            )


def _client_error(code: str, status: int) -> bce.ClientError:
    return bce.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("exc", "reached", "expected"),
    [
        (_client_error("SlowDown", 503), True, TransientStorageError),
        (_client_error("InternalError", 500), True, TransientStorageError),
        (_client_error("", 502), True, TransientStorageError),
        (_client_error("TooManyRequests", 429), True, TransientStorageError),
        (_client_error("NoSuchBucket", 404), True, BucketConfigError),
        (_client_error("AccessDenied", 403), True, BucketConfigError),
        (_client_error("InvalidAccessKeyId", 403), True, BucketConfigError),
        (_client_error("SignatureDoesNotMatch", 403), True, BucketConfigError),
        (_client_error("PermanentRedirect", 301), True, BucketConfigError),
        (_client_error("NoSuchKey", 404), True, ObjectNotFound),
        (_client_error("PreconditionFailed", 412), True, PreconditionFailed),
        (_client_error("KeyTooLongError", 400), True, UnsafeKeyError),
        (_client_error("InvalidRequest", 400), True, BucketError),
        (bce.EndpointConnectionError(endpoint_url="http://x"), False, BucketConfigError),
        (bce.EndpointConnectionError(endpoint_url="http://x"), True, TransientStorageError),
        (bce.ConnectTimeoutError(endpoint_url="http://x"), True, TransientStorageError),
        (bce.ReadTimeoutError(endpoint_url="http://x"), True, TransientStorageError),
        (bce.ConnectionClosedError(endpoint_url="http://x"), True, TransientStorageError),
        (bce.NoCredentialsError(), False, BucketConfigError),
        (TimeoutError(), True, TransientStorageError),
    ],
)
def test_s3_error_mapping(exc: Exception, reached: bool, expected: type[BucketError]) -> None:
    """Transient faults (after botocore's retries) vs. config errors vs. object answers."""
    b = S3Bucket("some-bucket", endpoint_url="http://127.0.0.1:9")
    b._reached = reached
    mapped = b._map_error(exc, "put", "outputs/k")
    assert type(mapped) is expected, mapped
    assert "some-bucket" in str(mapped)


def test_bucket_spec_reaches_the_same_bucket(bucket_spec: Any) -> None:
    """The spec/CLI args a subprocess would get open a working bucket of the right kind."""
    bucket = bucket_spec.open()
    assert isinstance(bucket, S3Bucket if bucket_spec.kind == "s3" else LocalFolderBucket)
    assert bucket_spec.cli_args[:2] == ["--bucket", bucket_spec.spec]
    assert arun(bucket, bucket.create_if_absent("_dropgpu/probe", b"1")) is True
    again = bucket_spec.open()
    assert arun(again, again.get_bytes("_dropgpu/probe")) == b"1"


# -- bucket URLs --------------------------------------------------------------------------------


def test_open_bucket_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = open_bucket("s3://my-bucket", endpoint_url="http://127.0.0.1:9")
    assert isinstance(b, S3Bucket) and b.name == "my-bucket"
    assert b.url == "s3://my-bucket (endpoint http://127.0.0.1:9)"
    assert isinstance(open_bucket("s3://my-bucket/"), S3Bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8")
    assert open_bucket("S3://env-bucket").url == "s3://env-bucket (endpoint http://127.0.0.1:8)"

    folder = tmp_path / "new folder" / "bucket"
    local = open_bucket(str(folder))
    assert isinstance(local, LocalFolderBucket)
    assert (folder / "inputs").is_dir()  # created, ready for drops
    assert local.url == folder.resolve().as_uri()
    assert isinstance(open_bucket(folder), LocalFolderBucket)
    assert open_bucket(folder.resolve().as_uri()).root == folder.resolve()

    monkeypatch.chdir(tmp_path)
    rel = open_bucket("file://relative")
    assert isinstance(rel, LocalFolderBucket) and rel.root == (tmp_path / "relative").resolve()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("s3://", "no bucket name"),
        ("s3:///x", "no bucket name"),
        ("s3://bucket/some/prefix", "not supported yet"),
        ("s3://bad bucket", "not a valid bucket name"),
        ("gs://bucket", "unsupported"),
        ("http://example.com/bucket", "unsupported"),
        ("", "empty"),
    ],
)
def test_open_bucket_rejects_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(BucketConfigError, match=match):
        open_bucket(spec)


def test_open_bucket_folder_errors(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(BucketConfigError, match="not a folder"):
        open_bucket(str(a_file))
    with pytest.raises(BucketConfigError, match="only applies to s3://"):
        open_bucket(str(tmp_path), endpoint_url="http://127.0.0.1:9")
