"""The embedded default bucket: a local folder where key ``a/b/c.mp4`` is ``root/a/b/c.mp4``.

It keeps the S3 semantics dropgpu relies on:
- ETag = hex MD5 of the content (what S3 gives single-part objects), cached in a
  disposable sqlite database so listings do not re-hash every file
  (infra.storage.etag_cache);
- writes are atomic (temp file + fsync + rename): readers never see half a file;
- create-if-absent is ``link(tmp, final)``, which fails if ``final`` exists, so it
  is exclusive across processes and the object is complete the moment it appears.

Keys never become arbitrary paths: unsafe keys raise UnsafeKeyError, and the
resolved path must stay under the root (symlinks cannot lead out of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
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
from infra.storage.etag_cache import EtagCache, FileStat

log: FilteringBoundLogger = structlog.get_logger(__name__)
T = TypeVar("T")

_CHUNK = 1024 * 1024
# Internal state of this backend lives at root/.dropgpu; it is never a key.
_STATE_DIR = ".dropgpu"
_CACHE_FILE = "etag-cache.sqlite3"
# Our in-flight temp files: ".<name prefix>.dropgpu-tmp-<16 hex>".
_TMP_MARK = ".dropgpu-tmp-"
_TMP_RE = re.compile(r"^\..*\.dropgpu-tmp-[0-9a-f]{16}$", re.DOTALL)
_NAME_MAX = 255  # bytes per path component on the usual Linux/macOS filesystems
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Worth retrying later: space freed, network filesystem back, lock released.
_TRANSIENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ETIMEDOUT,
    errno.ESTALE,
    errno.EINTR,
}


def _utc(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC)


def _check_chars(text: str, what: str) -> None:
    if text.startswith("/"):
        raise UnsafeKeyError(f"{what} {text!r} starts with '/'")
    if "\\" in text:
        raise UnsafeKeyError(f"{what} {text!r} contains a backslash")
    if _CONTROL_RE.search(text):
        raise UnsafeKeyError(f"{what} {text!r} contains a control character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UnsafeKeyError(f"{what} {text!r} is not valid UTF-8") from e


def _check_segments(text: str, segments: list[str], what: str) -> None:
    for seg in segments:
        if seg in ("", ".", ".."):
            raise UnsafeKeyError(f"{what} {text!r} has an empty, '.' or '..' path segment")
        if len(seg.encode("utf-8")) > _NAME_MAX:
            raise UnsafeKeyError(
                f"{what} {text!r} has a segment longer than {_NAME_MAX} bytes, "
                "which a local folder cannot store (use an S3 bucket or shorter names)"
            )
    if segments and segments[0] == _STATE_DIR:
        raise UnsafeKeyError(f"{what} {text!r}: {_STATE_DIR}/ is reserved for the folder bucket")


def _all_before(dir_key: str, start_after: str | None) -> bool:
    """True when every key under ``dir_key`` ("a/b/") sorts at or before ``start_after``.

    Keys under it all start with ``dir_key``; unless ``start_after`` itself starts
    with it, they compare like ``dir_key`` does. (str order is code-point order,
    which is UTF-8 byte order, S3's order.)
    """
    return start_after is not None and dir_key < start_after and not start_after.startswith(dir_key)


def validate_key(key: str) -> list[str]:
    """The key's path segments, or UnsafeKeyError when it cannot map to a file safely."""
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError(f"empty or non-string key {key!r}")
    _check_chars(key, "key")
    segments = key.split("/")
    _check_segments(key, segments, "key")
    if _TMP_RE.match(segments[-1]):
        raise UnsafeKeyError(f"key {key!r} looks like a dropgpu temp file")
    return segments


def _validate_prefix(prefix: str) -> list[str]:
    """Segments of the directory part of a listing prefix (the rest is a string filter)."""
    if not prefix:
        return []
    _check_chars(prefix, "prefix")
    dir_part = prefix.rpartition("/")[0]
    if not dir_part:
        return []
    segments = dir_part.split("/")
    _check_segments(prefix, segments, "prefix")
    return segments


class LocalFolderBucket(Bucket):
    """A folder as a bucket. Safe to share between processes on one machine."""

    def __init__(self, root: Path | str) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise BucketConfigError(
                f"bucket folder {str(root)!r} does not exist or is not a folder"
            )
        # realpath once: every key's resolved path is checked against it.
        self.root = Path(os.path.realpath(root))
        self.url = self.root.as_uri()
        self.stats = RequestStats()
        self._cache = EtagCache(self.root / _STATE_DIR / _CACHE_FILE)

    def __repr__(self) -> str:
        return f"LocalFolderBucket({str(self.root)!r})"

    # -- paths -------------------------------------------------------------

    def _path(self, key: str) -> Path:
        segments = validate_key(key)
        path = self.root.joinpath(*segments)
        # A symlinked folder inside the bucket must not lead outside of it.
        if not self._inside(path):
            raise UnsafeKeyError(f"key {key!r} resolves outside the bucket folder")
        return path

    def _inside(self, path: Path | str) -> bool:
        real = os.path.realpath(path)
        return real == str(self.root) or real.startswith(str(self.root) + os.sep)

    async def _io(self, op: str, key: str, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking file I/O in a thread; OS errors become bucket errors."""
        try:
            return await asyncio.to_thread(fn, *args)
        except (
            BucketError,
            FileExistsError,  # create_if_absent lost the race
            FileNotFoundError,  # "no such object": callers map these three
            IsADirectoryError,
            NotADirectoryError,
        ):
            raise
        except PermissionError as e:
            raise BucketConfigError(
                f"{op} {key!r} in {self.url}: permission denied ({e.filename}): "
                "fix the folder's permissions"
            ) from e
        except OSError as e:
            cls = TransientStorageError if e.errno in _TRANSIENT_ERRNOS else BucketError
            raise cls(f"{op} {key!r} in {self.url}: {e.strerror or e}") from e

    # -- listing -----------------------------------------------------------

    async def list(self, prefix: str, *, start_after: str | None = None) -> Listing:
        self.stats.add("list")
        dir_segments = _validate_prefix(prefix)
        objects = await self._io(
            "list", prefix, self._list_sync, prefix, dir_segments, start_after or None
        )
        return Listing(objects=objects, server_time=datetime.now(UTC), requests=1)

    def _scan(
        self, directory: Path, key_prefix: str, prefix: str, start_after: str | None = None
    ) -> Iterator[tuple[str, Path, FileStat]]:
        """(key, path, stat) of regular files below ``directory`` that may match ``prefix``."""
        try:
            it = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return
        with it:
            for entry in it:
                name = entry.name
                if not key_prefix and name == _STATE_DIR:
                    continue
                key = key_prefix + name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        sub = key + "/"
                        # Only descend where keys can still start with the prefix
                        # and can still sort after start_after.
                        if (sub.startswith(prefix) or prefix.startswith(sub)) and not _all_before(
                            sub, start_after
                        ):
                            yield from self._scan(Path(entry.path), sub, prefix, start_after)
                        continue
                    if start_after is not None and key <= start_after:
                        continue  # not hashed, not even stat'ed
                    if _TMP_RE.match(name):
                        continue  # a write of ours in flight
                    # A symlinked file counts only when it stays inside the bucket.
                    if entry.is_symlink() and not self._inside(entry.path):
                        log.warning("skipping_symlink_outside_bucket", key=key)
                        continue
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # deleted while we listed
                try:
                    validate_key(key)
                except UnsafeKeyError as e:
                    # e.g. a file name with a backslash or bytes that are not UTF-8:
                    # it cannot be addressed as a key, so say so instead of failing later.
                    log.warning("skipping_unaddressable_file", path=entry.path, reason=str(e))
                    continue
                yield key, Path(entry.path), FileStat.of(st)

    def _list_sync(
        self, prefix: str, dir_segments: list[str], start_after: str | None = None
    ) -> list[ObjectInfo]:
        start = self.root.joinpath(*dir_segments)
        if not self._inside(start):
            raise UnsafeKeyError(f"prefix {prefix!r} resolves outside the bucket folder")
        key_prefix = "/".join(dir_segments) + "/" if dir_segments else ""
        found = [
            (k, p, s)
            for k, p, s in self._scan(start, key_prefix, prefix, start_after)
            if k.startswith(prefix)
        ]
        etags = self._cache.etags(prefix, found, start_after=start_after)
        objects = [
            ObjectInfo(key, etag, st.size, _utc(st.mtime_ns)) for key, (etag, st) in etags.items()
        ]
        # Python orders str by code point, which is S3's UTF-8 byte order.
        objects.sort(key=lambda o: o.key)
        return objects

    # -- reads ---------------------------------------------------------------

    async def get_to_file(self, key: str, dest: Path, *, if_match: str | None = None) -> ObjectInfo:
        self.stats.add("get")
        path = self._path(key)
        return await self._io("get", key, self._get_to_file_sync, key, path, Path(dest), if_match)

    def _get_to_file_sync(
        self, key: str, path: Path, dest: Path, if_match: str | None
    ) -> ObjectInfo:
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below; one fd = one version
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ObjectNotFound(f"{key!r} not found in {self.url}") from e
        with src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ObjectNotFound(f"{key!r} is not a file in {self.url}")
            md5 = hashlib.md5(usedforsecurity=False)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(dest, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        md5.update(chunk)
                        out.write(chunk)
                etag = md5.hexdigest()
                if if_match is not None and etag != if_match.strip('"'):
                    raise PreconditionFailed(
                        f"{key!r} changed: etag is {etag}, expected {if_match.strip(chr(34))}"
                    )
            except BaseException:
                with contextlib.suppress(OSError):
                    dest.unlink()
                raise
        return ObjectInfo(key, etag, st.st_size, _utc(st.st_mtime_ns))

    async def get_bytes(self, key: str) -> bytes:
        self.stats.add("get")
        path = self._path(key)
        try:
            return await self._io("get", key, path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ObjectNotFound(f"{key!r} not found in {self.url}") from e

    # -- writes --------------------------------------------------------------

    async def put_file(self, key: str, src: Path, *, content_type: str) -> str:
        self.stats.add("put")
        path = self._path(key)
        return await self._io("put", key, self._write_sync, key, path, Path(src), None, False)

    async def put_bytes(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> str:
        self.stats.add("put")
        path = self._path(key)
        return await self._io("put", key, self._write_sync, key, path, None, bytes(body), False)

    async def create_if_absent(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> bool:
        self.stats.add("create")
        path = self._path(key)
        try:
            await self._io("create", key, self._write_sync, key, path, None, bytes(body), True)
        except FileExistsError:
            return False
        return True

    def _open_tmp(self, key: str, path: Path) -> tuple[int, Path]:
        """A fresh temp file beside ``path`` (same filesystem, so rename/link are atomic)."""
        stem = path.name.encode("utf-8")[:100].decode("utf-8", "ignore")
        not_a_folder = UnsafeKeyError(
            f"key {key!r} cannot be stored in a local folder: a parent of it is a file "
            "(S3 allows both 'a' and 'a/b', a folder cannot)"
        )
        for _ in range(5):
            tmp = path.with_name(f".{stem}{_TMP_MARK}{secrets.token_hex(8)}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # 0o666 & umask, like any file a user's tools would create.
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except (FileNotFoundError, FileExistsError) as e:
                # FileNotFoundError: a concurrent delete() pruned the empty parent
                # between mkdir and open. FileExistsError: mkdir met a file.
                if isinstance(e, FileExistsError) and not path.parent.is_dir():
                    raise not_a_folder from e
                continue
            except NotADirectoryError as e:
                raise not_a_folder from e
            return fd, tmp
        raise BucketError(f"could not create a temp file for {key!r} in {str(path.parent)!r}")

    def _write_sync(
        self, key: str, path: Path, src: Path | None, body: bytes | None, exclusive: bool
    ) -> str:
        md5 = hashlib.md5(usedforsecurity=False)
        fd, tmp = self._open_tmp(key, path)
        try:
            with os.fdopen(fd, "wb") as out:
                if body is not None:
                    md5.update(body)
                    out.write(body)
                else:
                    assert src is not None
                    with open(src, "rb") as f:
                        while chunk := f.read(_CHUNK):
                            md5.update(chunk)
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
                inode = os.fstat(out.fileno()).st_ino
            if exclusive:
                self._link_exclusive(key, tmp, path)
            else:
                try:
                    os.replace(tmp, path)
                except IsADirectoryError as e:
                    raise UnsafeKeyError(
                        f"key {key!r} cannot be stored in a local folder: it is a folder"
                    ) from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(path.parent)
        etag = md5.hexdigest()
        # Spare the next listing from hashing what we just wrote, unless another
        # writer already replaced it (then the inode differs).
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if st.st_ino == inode:
                self._cache.store({key: (FileStat.of(st), etag)})
        return etag

    @staticmethod
    def _link_exclusive(key: str, tmp: Path, path: Path) -> None:
        try:
            os.link(tmp, path)  # FileExistsError when someone else created it first
        except FileExistsError:
            raise
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # No hard links here (some FUSE/SMB/exFAT mounts): O_EXCL keeps the create
            # exclusive, but a reader may briefly see a partial file.
            log.warning("no_hardlinks_fallback_to_o_excl", key=key, error=str(e))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            with os.fdopen(fd, "wb") as out, open(tmp, "rb") as f:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())

    async def delete(self, key: str) -> None:
        self.stats.add("delete")
        path = self._path(key)
        if key.split("/", 1)[0] == "inputs":
            raise UnsafeKeyError(f"refusing to delete {key!r}: dropgpu never deletes inputs")
        await self._io("delete", key, self._delete_sync, path)

    def _delete_sync(self, path: Path) -> None:
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a folder is not an object: nothing to delete
        # Prune folders emptied by the delete, like S3 where prefixes vanish with
        # their last object; stop at the root and at inputs/ (created for users).
        parent = path.parent
        while parent != self.root and parent.parent != parent:
            if parent == self.root / "inputs":
                break
            try:
                os.rmdir(parent)
            except OSError:
                break  # not empty (or gone): done
            parent = parent.parent

    async def close(self) -> None:
        return None


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform can fsync a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
