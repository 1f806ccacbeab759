"""The folder bucket's ETags: the MD5 of each file, cached by its stat in sqlite.

S3 gives a single-part object the hex MD5 of its content as ETag; the folder
bucket does the same for every file, whatever its size. Hashing a big folder on
every listing would be slow, so each ETag is kept with the file's (size,
mtime_ns, inode, ctime_ns): while those match, the file is not read again.

The database is disposable: several processes share it (WAL, a busy timeout),
and every failure means "compute". A locked or read-only file costs hashing time
this once; a corrupt one is deleted and started afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog
from structlog.typing import FilteringBoundLogger

from infra.errors import DropgpuError

log: FilteringBoundLogger = structlog.get_logger(__name__)
T = TypeVar("T")

_CHUNK = 1024 * 1024
# Hash new/changed files in parallel on the first listing of a big folder
# (hashlib releases the GIL on large buffers).
HASH_WORKERS = min(8, os.cpu_count() or 2)


@dataclass(frozen=True, slots=True)
class FileStat:
    """What must not change for a cached ETag to stay valid."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


# How the listing hands over a file: its path (outside the folder bucket, in tests)
# or a function that opens it safely (infra.storage.nofollow) and returns a descriptor.
OpenFile = Callable[[], int]
Source = Path | OpenFile
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def _open(source: Source) -> int:
    if isinstance(source, Path):
        return os.open(source, _OPEN_FLAGS)  # O_NONBLOCK: a FIFO cannot hang the listing
    return source()


def hash_stable(source: Source) -> tuple[str, FileStat, bool] | None:
    """(md5, stat after, unchanged during hashing?), or None when the file vanished or
    is no regular file any more; other errors (EACCES, EIO, ...) are raised."""
    try:
        fd = _open(source)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb", buffering=0) as f:
        before = FileStat.of(st)
        md5 = hashlib.md5(usedforsecurity=False)
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
        after = FileStat.of(os.fstat(fd))
    # Written to while we hashed (a sync tool still copying): report it but do
    # not cache; its fresh mtime keeps it unsettled and the next listing re-hashes.
    return md5.hexdigest(), after, before == after


_Hashed = tuple[str, FileStat, bool]


def _hash_one(item: tuple[str, Source]) -> tuple[str, _Hashed | Exception | None]:
    key, source = item
    try:
        return key, hash_stable(source)
    except (OSError, DropgpuError) as e:  # unreadable, or refused by the safe opener
        return key, e


class EtagCache:
    """(key, size, mtime_ns, inode, ctime_ns) -> MD5 in sqlite; every error means "compute".

    Several processes share a bucket: WAL lets readers and one writer work at
    once, the busy timeout rides out short write locks. Nothing here is ever
    authoritative: a locked database just costs hashing time this once, and a
    corrupt one is deleted and started afresh.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._warned = False
        self._reset_done = False
        # One open connection per thread (sqlite connections are not shared across
        # threads) and per process (never used across a fork). Opening one per call
        # cost more than the query: connect, PRAGMAs, and on close of the last
        # connection a WAL checkpoint with its fsyncs (about 3 ms per write here).
        self._local = threading.local()

    def etags(
        self,
        prefix: str,
        files: Sequence[tuple[str, Source, FileStat]],
        *,
        start_after: str | None = None,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> dict[str, tuple[str, FileStat]]:
        """ETag and stat of each listed ``(key, source, stat)``; only new or changed files are read.

        ``files`` is everything a listing of ``prefix`` found (after ``start_after``);
        cached keys under ``prefix`` it did not find are forgotten. A file that
        vanished while it was hashed is left out of the answer; one that could not
        be read is left out too and handed to ``on_error`` (key, error), so one bad
        file never fails the listing.
        """
        cached = self.load(prefix)
        out: dict[str, tuple[str, FileStat]] = {}
        todo: list[tuple[str, Source]] = []
        for key, path, st in files:
            hit = cached.get(key)
            if hit is not None and hit[0] == st:
                out[key] = (hit[1], st)
            else:
                todo.append((key, path))

        fresh: dict[str, tuple[FileStat, str]] = {}
        if todo:
            with ThreadPoolExecutor(max_workers=min(HASH_WORKERS, len(todo))) as pool:
                results = list(pool.map(_hash_one, todo))
            for key, res in results:
                if isinstance(res, Exception):
                    if on_error is not None:
                        on_error(key, res)
                    continue
                if res is None:
                    continue  # vanished while hashing
                etag, st_after, stable = res
                out[key] = (etag, st_after)
                if stable:
                    fresh[key] = (st_after, etag)

        listed = {key for key, _, _ in files}
        # Keys at or before start_after were not looked at: they are not stale.
        stale = [k for k in cached if k not in listed and (start_after is None or k > start_after)]
        self.store(fresh, stale)
        return out

    def load(self, prefix: str) -> dict[str, tuple[FileStat, str]]:
        """Every cached entry whose key starts with ``prefix``; {} when the cache is unusable."""

        def q(conn: sqlite3.Connection) -> dict[str, tuple[FileStat, str]]:
            rows = conn.execute(
                "SELECT key, size, mtime_ns, inode, ctime_ns, etag FROM etags "
                "WHERE substr(key, 1, ?) = ?",
                (len(prefix), prefix),
            ).fetchall()
            return {r[0]: (FileStat(r[1], r[2], r[3], r[4]), r[5]) for r in rows}

        return self._run(q, {})

    def store(self, upserts: dict[str, tuple[FileStat, str]], deletes: Sequence[str] = ()) -> None:
        """Remember ``upserts`` and forget ``deletes`` in one transaction (best effort)."""
        if not (upserts or deletes):
            return

        def q(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO etags VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (k, s.size, s.mtime_ns, s.inode, s.ctime_ns, etag)
                        for k, (s, etag) in upserts.items()
                    ],
                )
                conn.executemany("DELETE FROM etags WHERE key = ?", [(k,) for k in deletes])
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

        self._run(q, None)

    # -- sqlite ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=2.0, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 2000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS etags (key TEXT PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, inode INTEGER, ctime_ns INTEGER, etag TEXT)"
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        held: tuple[int, sqlite3.Connection] | None = getattr(self._local, "conn", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        conn = self._connect()
        self._local.conn = (os.getpid(), conn)
        return conn

    def _forget_connection(self) -> None:
        held: tuple[int, sqlite3.Connection] | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if held is not None and held[0] == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                held[1].close()

    def _run(self, fn: Callable[[sqlite3.Connection], T], default: T) -> T:
        for _ in range(2):
            try:
                try:
                    return fn(self._connection())
                except BaseException:
                    # A failed call may leave the connection mid-transaction or point
                    # at a deleted file: the next call opens a fresh one.
                    self._forget_connection()
                    raise
            except sqlite3.DatabaseError as e:
                # OperationalError is "locked", "read-only", ...: skip the cache this
                # time. Any other DatabaseError means a damaged file: start over once.
                if isinstance(e, sqlite3.OperationalError) or self._reset_done:
                    self._warn(e)
                    return default
                self._reset_done = True
                log.warning("etag_cache_reset", path=str(self.path), error=str(e))
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(OSError):
                        os.unlink(f"{self.path}{suffix}")
            except (sqlite3.Error, OSError) as e:
                self._warn(e)
                return default
        return default

    def _warn(self, e: Exception) -> None:
        if not self._warned:  # once per bucket object: it recurs on every listing
            log.warning("etag_cache_unusable", path=str(self.path), error=str(e))
            self._warned = True
