"""The embedded default bucket: a local folder where key ``a/b/c.mp4`` is ``root/a/b/c.mp4``.

It keeps the S3 semantics dropgpu relies on:
- ETag = hex MD5 of the content (what S3 gives single-part objects), cached in a
  disposable sqlite database so listings do not re-hash every file
  (infra.storage.etag_cache);
- writes are atomic (temp file + fsync + rename): readers never see half a file;
- create-if-absent is ``link(tmp, final)``, which fails if ``final`` exists, so it
  is exclusive across processes and the object is complete the moment it appears.

Keys never become arbitrary paths (infra.storage.folder_keys), and no operation
follows a symlink on the way to a key (infra.storage.nofollow): every folder is
opened relative to its parent's descriptor with O_NOFOLLOW, and the final
open/rename/link/unlink happens in the last one. A symlink on a write or delete
path is an UnsafeKeyError; deletes act on exactly the key's own name. Reads
follow only a *file* link whose target, resolved by that same walk, is a regular
file inside the bucket, and open with O_NONBLOCK + fstat, so a FIFO or device
swapped in at a key is refused instead of hanging the reader.

Listings never fail because of one entry (infra.storage.folder_scan): what
cannot be an object is reported in ``Listing.skipped``. A file another process
still has open for writing is listed as modified "now" so it keeps settling
(infra.storage.in_flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable
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
from infra.storage.folder_keys import STATE_DIR, TMP_MARK, validate_key, validate_prefix
from infra.storage.folder_scan import FolderScan, skipped_for_error
from infra.storage.in_flight import WriteTracker
from infra.storage.nofollow import SymlinkInPath, folders, open_regular

__all__ = ["LocalFolderBucket", "validate_key"]

log: FilteringBoundLogger = structlog.get_logger(__name__)
T = TypeVar("T")

_CHUNK = 1024 * 1024
_CACHE_FILE = "etag-cache.sqlite3"
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
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


class LocalFolderBucket(Bucket):
    """A folder as a bucket. Safe to share between processes on one machine."""

    def __init__(self, root: Path | str) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise BucketConfigError(
                f"bucket folder {str(root)!r} does not exist or is not a folder"
            )
        # realpath once: every walk starts at this folder; file links are resolved against it.
        self.root = Path(os.path.realpath(root))
        self.url = self.root.as_uri()
        self.stats = RequestStats()
        self._cache = EtagCache(self.root / STATE_DIR / _CACHE_FILE)
        self._writes = WriteTracker(self.root / STATE_DIR)

    def __repr__(self) -> str:
        return f"LocalFolderBucket({str(self.root)!r})"

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
        dir_segments = validate_prefix(prefix)
        return await self._io("list", prefix, self._list_sync, prefix, dir_segments, start_after)

    def _list_sync(self, prefix: str, dir_segments: list[str], start_after: str | None) -> Listing:
        start_after = start_after or None
        look = self._writes.look(prefix, remember=start_after is None)
        scan = FolderScan(self.root, prefix, dir_segments, start_after, look.being_written).run()
        skipped = scan.skipped

        def unreadable(key: str, e: Exception) -> None:
            skipped.append(skipped_for_error(key, e))

        etags = self._cache.etags(
            prefix,
            [(f.key, f.open_file, f.stat) for f in scan.found],
            start_after=start_after,
            on_error=unreadable,
        )
        look.done()
        now = datetime.now(UTC)
        objects = []
        for f in scan.found:
            if f.key not in etags:
                continue  # vanished or unreadable (then in skipped)
            etag, st = etags[f.key]
            # Still open for writing, or changed while we hashed it: "modified now",
            # so the settle rule waits for the writer instead of claiming half a file.
            writing = f.being_written or st != f.stat
            objects.append(ObjectInfo(f.key, etag, st.size, now if writing else _utc(st.mtime_ns)))
        # Python orders str by code point, which is S3's UTF-8 byte order.
        objects.sort(key=lambda o: o.key)
        skipped.sort(key=lambda e: e.name)
        return Listing(objects=objects, server_time=now, requests=1, skipped=skipped)

    # -- reads ---------------------------------------------------------------

    def _open_object(self, key: str) -> int:
        """A read descriptor of the object's regular file; ObjectNotFound when there is none."""
        segments = validate_key(key)
        try:
            return open_regular(self.root, segments)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise ObjectNotFound(f"{key!r} not found in {self.url}") from e
        except ObjectNotFound as e:  # a FIFO, device, socket or folder at the key
            raise ObjectNotFound(f"{key!r} not found in {self.url}: {e}") from e
        except UnsafeKeyError as e:  # a symlinked folder, or a link leading out
            raise UnsafeKeyError(f"cannot read {key!r}: {e}") from e

    async def get_to_file(self, key: str, dest: Path, *, if_match: str | None = None) -> ObjectInfo:
        self.stats.add("get")
        validate_key(key)
        return await self._io("get", key, self._get_to_file_sync, key, Path(dest), if_match)

    def _get_to_file_sync(self, key: str, dest: Path, if_match: str | None) -> ObjectInfo:
        fd = self._open_object(key)
        with os.fdopen(fd, "rb") as src:  # one descriptor = one version of the object
            st = os.fstat(fd)
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
        validate_key(key)
        return await self._io("get", key, self._get_bytes_sync, key)

    def _get_bytes_sync(self, key: str) -> bytes:
        with os.fdopen(self._open_object(key), "rb") as f:
            return f.read()

    # -- writes --------------------------------------------------------------

    async def put_file(self, key: str, src: Path, *, content_type: str) -> str:
        self.stats.add("put")
        segments = validate_key(key)
        return await self._io("put", key, self._write_sync, key, segments, Path(src), None, False)

    async def put_bytes(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> str:
        self.stats.add("put")
        segments = validate_key(key)
        return await self._io("put", key, self._write_sync, key, segments, None, bytes(body), False)

    async def create_if_absent(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> bool:
        self.stats.add("create")
        segments = validate_key(key)
        try:
            await self._io("create", key, self._write_sync, key, segments, None, bytes(body), True)
        except FileExistsError:
            return False
        return True

    def _write_sync(
        self,
        key: str,
        segments: list[str],
        src: Path | None,
        body: bytes | None,
        exclusive: bool,
    ) -> str:
        for _ in range(5):
            try:
                with folders(self.root, segments[:-1], create=True) as fds:
                    etag = self._write_in(fds[-1], key, segments[-1], src, body, exclusive)
            except SymlinkInPath as e:
                raise UnsafeKeyError(f"refusing to write {key!r}: {e}") from e
            except NotADirectoryError as e:
                raise UnsafeKeyError(
                    f"key {key!r} cannot be stored in a local folder: a parent of it is a file "
                    "(S3 allows both 'a' and 'a/b', a folder cannot)"
                ) from e
            except FileNotFoundError:
                # A concurrent delete() pruned an emptied folder on our way: walk again.
                continue
            if etag is not None:
                return etag
        raise BucketError(f"could not create a temp file for {key!r} in {self.url}")

    def _write_in(
        self,
        dir_fd: int,
        key: str,
        name: str,
        src: Path | None,
        body: bytes | None,
        exclusive: bool,
    ) -> str | None:
        """Write ``name`` in the folder ``dir_fd`` atomically; None: the folder was pruned."""
        stem = name.encode("utf-8")[:100].decode("utf-8", "ignore")
        tmp = f".{stem}{TMP_MARK}{secrets.token_hex(8)}"
        try:
            # 0o666 & umask, like any file a user's tools would create.
            fd = os.open(tmp, _TMP_FLAGS, 0o666, dir_fd=dir_fd)
        except FileNotFoundError:
            return None  # the folder was removed after we opened it
        md5 = hashlib.md5(usedforsecurity=False)
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
                self._link_exclusive(dir_fd, key, tmp, name)
            else:
                self._replace(dir_fd, key, tmp, name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
        with contextlib.suppress(OSError):  # best effort: not every platform syncs folders
            os.fsync(dir_fd)
        etag = md5.hexdigest()
        # Spare the next listing from hashing what we just wrote, unless another
        # writer already replaced it (then the inode differs).
        with contextlib.suppress(OSError):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_ino == inode:
                self._cache.store({key: (FileStat.of(st), etag)})
        return etag

    @staticmethod
    def _replace(dir_fd: int, key: str, tmp: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            # rename() would replace the link itself, not write through it; still, a
            # link where dropgpu writes is someone's trap or mistake: say so.
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeKeyError(
                    f"refusing to write {key!r}: it is a symlink in the bucket folder, and the "
                    "folder bucket never writes through or over one (remove the link)"
                )
        try:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except (IsADirectoryError, OSError) as e:
            if isinstance(e, IsADirectoryError) or e.errno in (errno.EISDIR, errno.ENOTEMPTY):
                raise UnsafeKeyError(
                    f"key {key!r} cannot be stored in a local folder: it is a folder"
                ) from e
            raise

    @staticmethod
    def _link_exclusive(dir_fd: int, key: str, tmp: str, name: str) -> None:
        try:
            # FileExistsError when anything, a link included, already has the name.
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # No hard links here (some FUSE/SMB/exFAT mounts): O_EXCL keeps the create
            # exclusive, but a reader may briefly see a partial file.
            log.warning("no_hardlinks_fallback_to_o_excl", key=key, error=str(e))
            fd = os.open(name, _TMP_FLAGS, 0o666, dir_fd=dir_fd)
            src = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as out, os.fdopen(src, "rb") as f:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())

    # -- deletes -------------------------------------------------------------

    async def delete(self, key: str) -> None:
        self.stats.add("delete")
        segments = validate_key(key)
        if segments[0] == "inputs":
            raise UnsafeKeyError(f"refusing to delete {key!r}: dropgpu never deletes inputs")
        await self._io("delete", key, self._delete_sync, key, segments)

    def _delete_sync(self, key: str, segments: list[str]) -> None:
        try:
            with folders(self.root, segments[:-1]) as fds:
                if not _unlink_file(fds[-1], segments[-1]):
                    return
                # Prune folders emptied by the delete, like S3 where prefixes vanish
                # with their last object; rmdir never follows a link. fds[i] is the
                # folder segments[:i], named segments[i - 1] inside fds[i - 1].
                for i in range(len(segments) - 1, 0, -1):
                    if i == 1 and segments[0] == "inputs":
                        break  # inputs/ is there for users to drop into
                    try:
                        os.rmdir(segments[i - 1], dir_fd=fds[i - 1])
                    except OSError:
                        break  # not empty (or gone): done
        except SymlinkInPath as e:
            raise UnsafeKeyError(f"refusing to delete {key!r}: {e}") from e
        except (FileNotFoundError, NotADirectoryError):
            return  # no such folder, so no such object

    async def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete exactly version ``etag``, atomically: the only delete of an input.

        The file is first renamed aside (one atomic step takes whichever version is
        at the name), hashed, and unlinked only when it is that version; any other
        version is linked back. A version written after the rename keeps the name.
        """
        self.stats.add("delete")
        segments = validate_key(key)
        return await self._io("delete", key, self._delete_if_match_sync, key, segments, etag)

    def _delete_if_match_sync(self, key: str, segments: list[str], etag: str) -> bool:
        name = segments[-1]
        try:
            with folders(self.root, segments[:-1]) as fds:
                d = fds[-1]
                stem = name.encode()[:100].decode("utf-8", "ignore")
                aside = f".{stem}{TMP_MARK}{secrets.token_hex(8)}"
                try:
                    os.rename(name, aside, src_dir_fd=d, dst_dir_fd=d)
                except (FileNotFoundError, NotADirectoryError):
                    return True  # already gone
                if self._etag_of(d, aside) == etag.strip('"'):
                    os.unlink(aside, dir_fd=d)
                    return True
                try:  # not the claimed version: put it back where it was
                    os.link(aside, name, src_dir_fd=d, dst_dir_fd=d, follow_symlinks=False)
                    os.unlink(aside, dir_fd=d)
                except FileExistsError:
                    # A newer upload took the name meanwhile. Never lose a version, and
                    # never make it a new input: it goes to the state folder, logged.
                    kept = self.root / STATE_DIR / "kept" / f"{secrets.token_hex(4)}-{stem}"
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(aside, kept, src_dir_fd=d)
                    log.warning("input_version_kept_aside", key=key, kept_as=str(kept))
                return False
        except SymlinkInPath as e:
            raise UnsafeKeyError(f"refusing to delete {key!r}: {e}") from e
        except (FileNotFoundError, NotADirectoryError):
            return True  # no such folder, so no such object

    @staticmethod
    def _etag_of(dir_fd: int, name: str) -> str | None:
        """The MD5 of a regular file in ``dir_fd``; None for anything else (a link, a FIFO)."""
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            )
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            md5 = hashlib.md5(usedforsecurity=False)
            while chunk := f.read(_CHUNK):
                md5.update(chunk)
        return md5.hexdigest()

    async def copy(self, src: str, dst: str, *, if_match: str) -> str:
        """Copy through a temporary file inside the bucket folder (same filesystem)."""
        tmp_root = self.root / STATE_DIR / "tmp"
        await asyncio.to_thread(tmp_root.mkdir, parents=True, exist_ok=True)
        tmp = tmp_root / f"copy-{secrets.token_hex(8)}"
        try:
            await self.get_to_file(src, tmp, if_match=if_match)
            return await self.put_file(dst, tmp, content_type="application/octet-stream")
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    async def close(self) -> None:
        return None


def _unlink_file(dir_fd: int, name: str) -> bool:
    """Remove ``name`` itself (a link is removed, never its target); False when it is
    missing or a folder (a folder is not an object: nothing to delete)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False
    except PermissionError:
        # macOS answers EPERM for unlink(folder); anything else is a real error.
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return False
        raise
    return True
