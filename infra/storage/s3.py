"""S3 (AWS, R2, SeaweedFS, MinIO, ...) as a Bucket, via aiobotocore.

Credentials come from the standard AWS chain (env, profile, SSO, instance role):
nothing secret is passed in or put into a message. The endpoint comes from the
argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``; the region from
the argument, else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``
(Cloudflare R2 documents ``auto`` but also accepts ``us-east-1``).

Every failure is mapped onto infra.storage.errors by infra.storage.s3_errors:
retrying cannot fix a BucketConfigError (its message says what to change), a
TransientStorageError is worth retrying later (botocore's own adaptive retries
are already spent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore import exceptions as bce
from structlog.typing import FilteringBoundLogger

from infra.storage.bucket import Bucket, Listing, ObjectInfo, RequestStats
from infra.storage.errors import (
    BucketConfigError,
    BucketError,
    ObjectNotFound,
    PreconditionFailed,
    TransientStorageError,
    UnsafeKeyError,
)
from infra.storage.file_window import FileWindow
from infra.storage.s3_errors import CreateConflict, S3Target, fail_fast, map_s3_error
from infra.text import redact_url

log: FilteringBoundLogger = structlog.get_logger(__name__)

MiB = 1024 * 1024
_CHUNK = MiB
_MIN_PART = 5 * MiB  # S3's minimum size for every part but the last
_MAX_PARTS = 10_000
_MAX_KEY_BYTES = 1024
_CREATE_CONFLICT_TRIES = 4


@dataclass(slots=True)
class _Pages:
    """What the pages of one LIST call returned."""

    objects: list[ObjectInfo]
    prefixes: list[str]  # CommonPrefixes, with a Delimiter
    requests: int
    server_time: datetime


def _lenient_start_after(start_after: str) -> str:
    """A StartAfter a little before ``start_after``; the caller filters the rest.

    SeaweedFS compares StartAfter with entry names one folder level at a time, so
    a cursor "a/c" (or "a/c-1", '-' < '/') skips the whole folder "a/c/" although
    "a/c/1" sorts after it. Cutting the last segment before its first character
    below '/', and one more, never names such a folder; the extra keys this lists
    again are few (for feed keys: the last ~10 seconds) and dropped afterwards.
    """
    parent, slash, name = start_after.rpartition("/")
    cut = next((i for i, ch in enumerate(name) if ch < "/"), len(name))
    return parent + slash + name[: max(0, cut - 1)]


def _server_time(resp: dict[str, Any]) -> datetime:
    """The store's clock from the HTTP Date header; our clock when it is missing."""
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            parsed = parsedate_to_datetime(date)
            if parsed.tzinfo is not None:
                return parsed.astimezone(UTC)
    return datetime.now(UTC)


def _unquote(etag: str) -> str:
    return etag.strip('"')


class S3Bucket(Bucket):
    """One S3 bucket. One client per event loop; ``close()`` (or ``async with``) frees it.

    Multipart uploads read parts one at a time per worker, so memory stays near
    ``max_concurrency * part_size`` whatever the file size.

    Clients come from ``session`` when one is given (else a fresh aiobotocore
    session per client): handlers registered on its botocore events, such as
    ``before-parameter-build.s3``, see every request this bucket makes.
    """

    def __init__(
        self,
        bucket_name: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
        max_concurrency: int = 8,
        copy_part_threshold: int = 5 * 1024 * MiB,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        session: AioSession | None = None,
    ) -> None:
        if not bucket_name or "/" in bucket_name:
            raise BucketConfigError(f"invalid S3 bucket name {bucket_name!r}")
        if part_size < _MIN_PART:
            raise ValueError(f"part_size must be at least {_MIN_PART} bytes (S3's minimum)")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.name = bucket_name
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        self.region = (
            region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        ) or "us-east-1"
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        # Above this a copy is a multipart UploadPartCopy (CopyObject stops at 5 GiB).
        self.copy_part_threshold = copy_part_threshold
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.stats = RequestStats()
        where = redact_url(self.endpoint_url, keep_query=True) if self.endpoint_url else None
        self.url = f"s3://{bucket_name}" + (f" (endpoint {where})" if where else "")
        self._target = S3Target(
            bucket_name, self.url, where or f"AWS S3 ({self.region})", self.region
        )

        self._session = session
        self._client: Any = None
        self._client_cm: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        # Until the endpoint has answered once, failing to reach it is a config
        # error (wrong URL, server not started) and is reported without retries.
        self._reached = False

    def __repr__(self) -> str:
        return f"S3Bucket({self.url!r})"

    # -- client ----------------------------------------------------------------

    def _config(self) -> AioConfig:
        kwargs: dict[str, Any] = {}
        if self.endpoint_url:
            # Path-style works on every S3-compatible store (SeaweedFS, MinIO, R2)
            # without wildcard DNS; the newer default checksums (CRC trailers) are
            # not implemented by all of them, so only send what is required.
            kwargs["s3"] = {"addressing_style": "path"}
            kwargs["request_checksum_calculation"] = "when_required"
            kwargs["response_checksum_validation"] = "when_required"
        return AioConfig(
            region_name=self.region,
            signature_version="s3v4",
            retries={"mode": "adaptive", "max_attempts": 8},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=max(10, self.max_concurrency * 2),
            **kwargs,
        )

    async def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        if self._loop is not loop:
            if self._client is not None:
                # aiohttp sessions are bound to their loop: a client made under an
                # earlier asyncio.run() cannot be used (or closed) from this one.
                log.warning("s3_client_loop_changed", bucket=self.url)
                self._client = self._client_cm = None
            self._loop, self._lock = loop, asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            if self._client is None:
                cm = (self._session or get_session()).create_client(
                    "s3", endpoint_url=self.endpoint_url, config=self._config()
                )
                client = await cm.__aenter__()
                client.meta.events.register_first("needs-retry.s3", self._fail_fast_unreached)
                self._client_cm, self._client = cm, client
        return self._client

    def _fail_fast_unreached(
        self, caught_exception: BaseException | None = None, **_: Any
    ) -> bool | None:
        """needs-retry hook: no backoff retries while the endpoint has never answered."""
        if fail_fast(caught_exception, reached=self._reached):
            return False  # a non-None answer that means "do not retry"
        return None

    async def close(self) -> None:
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            return  # bound to a finished loop: nothing we can close from here
        with contextlib.suppress(Exception):
            await cm.__aexit__(None, None, None)

    # -- errors ------------------------------------------------------------------

    def _map_error(self, e: BaseException, op: str, key: str) -> BucketError:
        """One of our exceptions for a botocore/aiohttp one (see infra.storage.s3_errors)."""
        if isinstance(e, bce.ClientError):
            self._reached = True  # an error answer is an answer
        return map_s3_error(e, op, key, self._target, reached=self._reached)

    async def _call(self, stat: str, op: str, key: str, method: str, **kwargs: Any) -> Any:
        client = await self._get_client()
        self.stats.add(stat)
        try:
            resp = await getattr(client, method)(Bucket=self.name, **kwargs)
        except Exception as e:
            raise self._map_error(e, op, key) from e
        self._reached = True
        return resp

    @staticmethod
    def _check_key(key: str) -> None:
        if not key:
            raise UnsafeKeyError("empty key")
        if len(key.encode("utf-8")) > _MAX_KEY_BYTES:
            raise UnsafeKeyError(f"key {key[:80]!r}... is longer than S3's {_MAX_KEY_BYTES} bytes")

    # -- Bucket API --------------------------------------------------------------

    async def list(self, prefix: str, *, start_after: str | None = None) -> Listing:
        pages = await self._pages(prefix, start_after=start_after)
        return Listing(
            objects=pages.objects, server_time=pages.server_time, requests=pages.requests
        )

    async def list_range(
        self, prefix: str, *, start_after: str | None = None, end_before: str
    ) -> Listing:
        pages = await self._pages(prefix, start_after=start_after, end_before=end_before)
        objects = [o for o in pages.objects if o.key < end_before]
        return Listing(objects=objects, server_time=pages.server_time, requests=pages.requests)

    async def list_tree(self, prefix: str, *, concurrency: int = 16) -> Listing:
        """``list(prefix)`` as up to ``concurrency`` key ranges listed in parallel.

        One ``Delimiter="/"`` listing finds the objects directly under ``prefix`` and
        its sub-folders (a single sub-folder is descended into, up to three levels).
        The sub-folders are cut into ``concurrency`` contiguous key ranges, each
        listed with StartAfter at its first folder and stopped at the next range's
        (``_pages(end_before=)``). So the LIST count is that of a sequential scan
        plus at most one partial page per range and the delimiter pages, however
        many or small the folders are; a flat folder is one sequential scan.

        The StartAfter is the folder prefix itself ("a/b/"): every store we know
        lists that folder's keys after it (a cursor without the slash makes
        SeaweedFS skip the folder). SeaweedFS orders names without their slash,
        so "b-x/" can come after "b/" and a range may stop before one of its
        folders: a folder of a range that yielded no key is listed on its own.
        """
        objects: list[ObjectInfo] = []
        requests = 0
        times: list[datetime] = []
        base, folders = prefix, []
        for _level in range(3):
            top = await self._pages(base, delimiter="/")
            objects += top.objects
            requests += top.requests
            times.append(top.server_time)
            folders = top.prefixes
            if len(folders) != 1:
                break
            base = folders[0]
        if folders:
            k = max(1, min(concurrency, len(folders)))
            firsts = [folders[i * len(folders) // k] for i in range(k)]
            bounds = [*firsts[1:], None]
            ranges = await asyncio.gather(
                *(
                    self._pages(base, start_after=first, end_before=end)
                    for first, end in zip(firsts, bounds, strict=True)
                )
            )
            seen = {o.key for o in objects}
            found: set[str] = set()  # folders that yielded keys

            def take(pages: _Pages, low: str, end: str | None) -> None:
                nonlocal requests
                requests += pages.requests
                times.append(pages.server_time)
                for o in pages.objects:
                    # Only keys inside this range's folders: direct objects came above.
                    rest = o.key[len(base) :]
                    inside = o.key >= low and (end is None or o.key < end)
                    if "/" in rest and inside and o.key not in seen:
                        seen.add(o.key)
                        found.add(base + rest.split("/", 1)[0] + "/")
                        objects.append(o)

            for first, end, pages in zip(firsts, bounds, ranges, strict=True):
                take(pages, first, end)
            # Only where the store's order differs from byte order (see above).
            unseen = [f for f in folders if f not in found]
            limit = asyncio.Semaphore(concurrency)

            async def alone(folder: str) -> _Pages:
                async with limit:
                    return await self._pages(folder)

            for folder, pages in zip(
                unseen, await asyncio.gather(*(alone(f) for f in unseen)), strict=True
            ):
                take(pages, folder, None)
        objects.sort(key=lambda o: o.key)
        return Listing(objects=objects, server_time=min(times), requests=requests)

    async def _pages(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        delimiter: str | None = None,
        end_before: str | None = None,
    ) -> _Pages:
        client = await self._get_client()
        paginator = client.get_paginator("list_objects_v2")
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        pages = 0
        server_time: datetime | None = None
        extra: dict[str, Any] = {}
        if start_after and (safe := _lenient_start_after(start_after)):
            extra["StartAfter"] = safe
        if delimiter:
            extra["Delimiter"] = delimiter
        try:
            async for page in paginator.paginate(
                Bucket=self.name, Prefix=prefix, PaginationConfig={"PageSize": 1000}, **extra
            ):
                pages += 1
                self.stats.add("list")
                self._reached = True
                if server_time is None:
                    server_time = _server_time(page)
                contents = page.get("Contents", ())
                for o in contents:
                    objects.append(
                        ObjectInfo(
                            key=o["Key"],
                            etag=_unquote(o["ETag"]),
                            size=int(o["Size"]),
                            last_modified=o["LastModified"].astimezone(UTC),
                        )
                    )
                prefixes += [c["Prefix"] for c in page.get("CommonPrefixes", ()) if c.get("Prefix")]
                # Keys come in order: once a page passes end_before, later pages cannot help.
                if end_before is not None and contents and contents[-1]["Key"] >= end_before:
                    break
        except Exception as e:
            self.stats.add("list")
            raise self._map_error(e, "list", prefix) from e
        # S3 already orders by UTF-8 bytes; not every compatible store promises it.
        objects.sort(key=lambda o: o.key)
        if start_after:
            # Nor does every store honour StartAfter: enforce it here too.
            objects = [o for o in objects if o.key > start_after]
        # A sub-folder equal to the prefix would list forever; keep only deeper ones.
        prefixes = sorted({p for p in prefixes if p.startswith(prefix) and p != prefix})
        return _Pages(objects, prefixes, pages, server_time or datetime.now(UTC))

    async def get_to_file(self, key: str, dest: Path, *, if_match: str | None = None) -> ObjectInfo:
        self._check_key(key)
        dest = Path(dest)
        kwargs: dict[str, Any] = {"Key": key}
        want = _unquote(if_match) if if_match is not None else None
        if want is not None:
            kwargs["IfMatch"] = f'"{want}"'
        resp = await self._call("get", "get", key, "get_object", **kwargs)
        body = resp["Body"]
        etag = _unquote(resp.get("ETag", ""))
        try:
            if want is not None and etag != want:
                # The store ignored If-Match: enforce it here rather than take new bytes.
                raise PreconditionFailed(f"get {key!r} in {self.url}: etag {etag} != {want}")
            await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
            size = await self._stream_to_file(body, dest, key)
        except BaseException as e:
            body.close()
            with contextlib.suppress(OSError):
                dest.unlink()
            if isinstance(e, Exception) and not isinstance(e, BucketError):
                raise self._map_error(e, "get", key) from e
            raise
        expected = resp.get("ContentLength")
        if expected is not None and size != int(expected):
            with contextlib.suppress(OSError):
                dest.unlink()
            raise TransientStorageError(
                f"get {key!r} in {self.url}: body ended after {size} of {expected} bytes"
            )
        return ObjectInfo(key, etag, size, resp["LastModified"].astimezone(UTC))

    @staticmethod
    async def _stream_to_file(body: Any, dest: Path, key: str) -> int:
        """Copy a streaming body to ``dest`` in ~1 MiB writes; memory stays bounded."""
        size = 0
        buf = bytearray()
        f = await asyncio.to_thread(open, dest, "wb")
        try:
            async with body as stream:
                while chunk := await stream.read(_CHUNK):
                    buf += chunk
                    size += len(chunk)
                    if len(buf) >= _CHUNK:
                        await asyncio.to_thread(f.write, bytes(buf))
                        buf.clear()
            if buf:
                await asyncio.to_thread(f.write, bytes(buf))
        finally:
            await asyncio.to_thread(f.close)
        return size

    async def get_bytes(self, key: str) -> bytes:
        self._check_key(key)
        resp = await self._call("get", "get", key, "get_object", Key=key)
        try:
            async with resp["Body"] as stream:
                return await stream.read()
        except Exception as e:
            raise self._map_error(e, "get", key) from e

    async def put_bytes(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> str:
        self._check_key(key)
        resp = await self._call(
            "put", "put", key, "put_object", Key=key, Body=bytes(body), ContentType=content_type
        )
        return _unquote(resp["ETag"])

    async def put_file(self, key: str, src: Path, *, content_type: str) -> str:
        self._check_key(key)
        size = (await asyncio.to_thread(os.stat, src)).st_size
        if size < self.multipart_threshold:
            f = await asyncio.to_thread(open, src, "rb")
            try:
                # A file object is streamed by aiohttp (and rewound by botocore on retry).
                resp = await self._call(
                    "put", "put", key, "put_object", Key=key, Body=f, ContentType=content_type
                )
            finally:
                await asyncio.to_thread(f.close)
            return _unquote(resp["ETag"])
        return await self._put_multipart(key, Path(src), size, content_type)

    async def _put_multipart(self, key: str, src: Path, size: int, content_type: str) -> str:
        # Parts grow beyond part_size only when the file needs more than 10,000 of them.
        part_size = max(self.part_size, math.ceil(math.ceil(size / _MAX_PARTS) / MiB) * MiB)
        n_parts = max(1, math.ceil(size / part_size))
        resp = await self._call(
            "multipart",
            "create multipart upload",
            key,
            "create_multipart_upload",
            Key=key,
            ContentType=content_type,
        )
        upload_id = resp["UploadId"]
        fd = await asyncio.to_thread(os.open, src, os.O_RDONLY)
        etags: dict[int, str] = {}
        numbers = iter(range(1, n_parts + 1))

        async def worker() -> None:
            # Each worker holds at most one part in memory.
            for number in numbers:
                offset = (number - 1) * part_size
                length = min(part_size, size - offset)
                if (await asyncio.to_thread(os.fstat, fd)).st_size < offset + length:
                    raise BucketError(f"put {key!r}: {src} shrank while it was being uploaded")
                # A file-like window, not bytes: botocore wraps bytes in BytesIO and
                # aiohttp copies that again, about three part sizes per part in flight.
                r = await self._call(
                    "multipart",
                    f"upload part {number}/{n_parts} of",
                    key,
                    "upload_part",
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=FileWindow(fd, offset, length),
                    ContentLength=length,
                )
                etags[number] = r["ETag"]

        try:
            tasks = [
                asyncio.create_task(worker()) for _ in range(min(self.max_concurrency, n_parts))
            ]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            done = await self._call(
                "multipart",
                "complete multipart upload",
                key,
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # Never leave an orphaned upload (stored, billed, invisible) behind.
            await asyncio.shield(self._abort_multipart(key, upload_id))
            raise
        finally:
            await asyncio.to_thread(os.close, fd)
        return _unquote(done["ETag"])

    async def _abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._call(
                "multipart",
                "abort multipart upload",
                key,
                "abort_multipart_upload",
                Key=key,
                UploadId=upload_id,
            )
        except BucketError as e:
            log.warning("multipart_abort_failed", key=key, error=str(e))

    async def create_if_absent(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> bool:
        """PutObject with ``If-None-Match: *``: 412 means someone else created it.

        If the request was resent (timeout, reset) the 412 may answer our own first
        attempt; then the object's ETag equals our body's MD5 and we won. Every 412
        is checked that way (one HEAD per lost race): botocore's RetryAttempts does
        not see aiohttp's own silent resend of an idempotent PUT whose reused
        connection was reset after the store applied it. Bodies should carry
        something unique (owner, attempt) so two callers never write identical bytes.
        """
        self._check_key(key)
        body = bytes(body)
        for attempt in range(_CREATE_CONFLICT_TRIES):
            try:
                await self._call(
                    "create",
                    "create",
                    key,
                    "put_object",
                    Key=key,
                    Body=body,
                    ContentType=content_type,
                    IfNoneMatch="*",
                )
                return True
            except PreconditionFailed:
                return await self._is_ours(key, body)
            except CreateConflict:
                # 409: a concurrent create of this key is in flight; it will
                # usually win, so look again briefly, then call it lost.
                if attempt == _CREATE_CONFLICT_TRIES - 1:
                    return False
                await asyncio.sleep(0.05 * 2**attempt + random.uniform(0, 0.05))
        return False

    async def _is_ours(self, key: str, body: bytes) -> bool:
        try:
            head = await self._call("head", "head", key, "head_object", Key=key)
        except ObjectNotFound:
            return False
        return (
            _unquote(head.get("ETag", "")) == hashlib.md5(body, usedforsecurity=False).hexdigest()
        )

    async def delete(self, key: str) -> None:
        self._check_key(key)
        with contextlib.suppress(ObjectNotFound):
            await self._call("delete", "delete", key, "delete_object", Key=key)

    async def copy(self, src: str, dst: str, *, if_match: str) -> str:
        """A server-side copy (no bytes through this machine), guarded by CopySourceIfMatch.

        Objects up to ``copy_part_threshold`` take one CopyObject (S3 allows up to 5 GiB);
        larger ones a multipart upload of UploadPartCopy ranges, each guarded too.
        """
        self._check_key(src)
        self._check_key(dst)
        want = _unquote(if_match)
        # HEAD with If-Match: the size picks the copy method, and a store that ignores
        # CopySourceIfMatch still cannot copy a newer version unnoticed.
        head = await self._call("head", "head", src, "head_object", Key=src, IfMatch=f'"{want}"')
        if _unquote(head.get("ETag", "")) != want:
            raise PreconditionFailed(f"copy {src!r} in {self.url}: it is no longer {want}")
        size = int(head.get("ContentLength", 0))
        source = {"Bucket": self.name, "Key": src}
        if size <= self.copy_part_threshold:
            resp = await self._call(
                "copy",
                "copy",
                src,
                "copy_object",
                Key=dst,
                CopySource=source,
                CopySourceIfMatch=f'"{want}"',
                MetadataDirective="COPY",
            )
            return _unquote(resp.get("CopyObjectResult", {}).get("ETag", ""))
        return await self._copy_multipart(src, dst, want, size, source)

    async def _copy_multipart(
        self, src: str, dst: str, want: str, size: int, source: dict[str, str]
    ) -> str:
        part_size = max(self.part_size, math.ceil(math.ceil(size / _MAX_PARTS) / MiB) * MiB)
        n_parts = max(1, math.ceil(size / part_size))
        resp = await self._call(
            "multipart", "create multipart upload", dst, "create_multipart_upload", Key=dst
        )
        upload_id = resp["UploadId"]
        limit = asyncio.Semaphore(self.max_concurrency)

        async def part(number: int) -> dict[str, Any]:
            first = (number - 1) * part_size
            last = min(size, first + part_size) - 1
            async with limit:
                r = await self._call(
                    "copy",
                    f"copy part {number}/{n_parts} of",
                    src,
                    "upload_part_copy",
                    Key=dst,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceIfMatch=f'"{want}"',
                    CopySourceRange=f"bytes={first}-{last}",
                )
            return {"PartNumber": number, "ETag": r["CopyPartResult"]["ETag"]}

        try:
            parts = await asyncio.gather(*(part(n) for n in range(1, n_parts + 1)))
            done = await self._call(
                "multipart",
                "complete multipart upload",
                dst,
                "complete_multipart_upload",
                Key=dst,
                UploadId=upload_id,
                MultipartUpload={"Parts": sorted(parts, key=lambda p: p["PartNumber"])},
            )
        except BaseException:
            await self._abort_multipart(dst, upload_id)
            raise
        return _unquote(done.get("ETag", ""))

    async def delete_if_match(self, key: str, etag: str) -> bool:
        """Check the ETag with a one-key LIST, then DeleteObject with If-Match.

        AWS S3 honours If-Match on DeleteObject (412 when another version is there);
        a store that ignores the header leaves the gap between the LIST and the
        DELETE (docs/operations.md, "after_success").
        """
        self._check_key(key)
        listing = await self.list(key)
        current = next((o.etag for o in listing.objects if o.key == key), None)
        if current is None:
            return True
        if current != _unquote(etag):
            return False
        try:
            await self._call(
                "delete", "delete", key, "delete_object", Key=key, IfMatch=f'"{current}"'
            )
        except PreconditionFailed:
            return False
        except ObjectNotFound:
            return True
        return True
