"""The one small storage interface dropgpu needs, shared by every backend.

Only the job runner, the tick and the CLI talk to a bucket; handlers never do.
All methods are async so the tick can list route prefixes in parallel.
"""

from __future__ import annotations

import abc
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    etag: str  # without the surrounding quotes S3 puts on the wire
    size: int
    last_modified: datetime  # timezone-aware UTC


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """Something under a listed prefix that can never be an object, and why.

    Only a folder bucket has these (S3 keys are always objects): a file whose name
    cannot be a key (newline, backslash, control character, bytes that are not
    UTF-8), a symlink, a FIFO or device, a symlink loop, a folder it may not read.
    The listing reports them instead of failing or dropping them silently, so the
    operator can see them in ``dropgpu status``.
    """

    name: str  # path relative to the bucket root, printable (odd characters escaped)
    kind: str  # "unaddressable_name" | "symlink" | "special_file" | "unreadable" | ...
    reason: str  # one line for a person: what is wrong and what to do


@dataclass(slots=True)
class Listing:
    objects: list[ObjectInfo]
    # The store's own clock when the listing was taken. Lease and settle ages are
    # measured against it, so a skewed local clock cannot expire a live lease.
    server_time: datetime
    requests: int = 1
    skipped: list[SkippedEntry] = field(default_factory=list)


@dataclass(slots=True)
class RequestStats:
    """Counts of requests by operation ("list", "get", "head", "put", "delete", ...)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, op: str, n: int = 1) -> None:
        self.counts[op] += n


class Bucket(abc.ABC):
    """A flat key space with create-if-absent. Keys are UTF-8 strings."""

    url: str
    stats: RequestStats

    @abc.abstractmethod
    async def list(self, prefix: str, *, start_after: str | None = None) -> Listing:
        """Every object whose key starts with ``prefix`` (all pages), sorted by key.

        With ``start_after``, only keys that sort strictly after it (S3's
        ``StartAfter``, UTF-8 byte order): a consumer of a time-ordered prefix
        lists just what is new, one request per 1,000 new keys.
        """

    @abc.abstractmethod
    async def get_to_file(self, key: str, dest: Path, *, if_match: str | None = None) -> ObjectInfo:
        """Stream an object into ``dest``.

        Raises ObjectNotFound, or PreconditionFailed when ``if_match`` is given and
        the object's current ETag differs (a newer version replaced it).
        """

    @abc.abstractmethod
    async def get_bytes(self, key: str) -> bytes:
        """A small object's body. Raises ObjectNotFound."""

    @abc.abstractmethod
    async def put_file(self, key: str, src: Path, *, content_type: str) -> str:
        """Upload a file (multipart above a threshold); returns the new ETag."""

    @abc.abstractmethod
    async def put_bytes(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> str:
        """Create or replace a small object; returns the new ETag."""

    @abc.abstractmethod
    async def create_if_absent(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> bool:
        """Create ``key`` only if no object exists there.

        Returns True when this call created it, False when it already existed
        (HTTP 412). Exactly one of many concurrent callers may see True.
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    # -- built on the primitives above; backends override them where the store can do
    # better (S3: one server-side copy, delimiter-partitioned listing, early stop) --

    async def list_tree(self, prefix: str, *, concurrency: int = 16) -> Listing:
        """The same objects as ``list(prefix)``; a backend may list sub-prefixes in parallel."""
        return await self.list(prefix)

    async def list_range(
        self, prefix: str, *, start_after: str | None = None, end_before: str
    ) -> Listing:
        """Objects under ``prefix`` with ``start_after < key < end_before``.

        For a time-ordered prefix (the feed) this reads only the pages up to
        ``end_before`` where the backend can stop early.
        """
        listing = await self.list(prefix, start_after=start_after)
        listing.objects = [o for o in listing.objects if o.key < end_before]
        return listing

    async def copy(self, src: str, dst: str, *, if_match: str) -> str:
        """Copy version ``if_match`` of ``src`` to ``dst`` (created or replaced); its ETag.

        Raises PreconditionFailed when ``src`` is now another version, ObjectNotFound
        when it is gone. This default streams through a temporary file.
        """
        with tempfile.TemporaryDirectory(prefix="dropgpu-copy-") as tmp:
            path = Path(tmp) / "object"
            await self.get_to_file(src, path, if_match=if_match)
            return await self.put_file(dst, path, content_type="application/octet-stream")

    async def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete ``key`` only while it is version ``etag``; True when that version is gone.

        False (nothing deleted) when another version is there now. The default checks
        with a one-key LIST and then deletes: a version written between the two
        requests would be lost, so backends that can make it atomic override this.
        """
        listing = await self.list(key)
        current = next((o.etag for o in listing.objects if o.key == key), None)
        if current is None:
            return True
        if current != etag:
            return False
        await self.delete(key)
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def __aenter__(self) -> Bucket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
