"""The folder bucket's listing walk: every object under a prefix, and why the rest is not one.

The walk goes through folder descriptors (infra.storage.nofollow), so it never
follows a folder link, and it never fails as a whole because of one entry: a
symlink loop, a folder it may not read, a name that cannot be a key, a FIFO,
device or socket, a symlink to something outside the bucket. Each of those
becomes a SkippedEntry (what it is and what to do) and the walk goes on.
Folder markers (empty folders) and dropgpu's own temp files are skipped
silently, as S3 would not show them either.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from infra.storage.bucket import SkippedEntry
from infra.storage.errors import BucketError
from infra.storage.etag_cache import FileStat, OpenFile
from infra.storage.folder_keys import STATE_DIR, TMP_RE, name_problem, printable
from infra.storage.nofollow import (
    LinkRefused,
    NotRegularFile,
    SymlinkInPath,
    describe_mode,
    open_dir,
    open_file_at,
    open_regular,
    open_root,
)

# (key, stat, opener) -> is it still being written? (infra.storage.in_flight)
BeingWritten = Callable[[str, FileStat, OpenFile], bool]


@dataclass(frozen=True, slots=True)
class Found:
    key: str
    open_file: OpenFile  # opens it again, safely, for hashing
    stat: FileStat
    being_written: bool


@dataclass(slots=True)
class Scan:
    found: list[Found] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)

    def skip(self, rel: str, kind: str, reason: str) -> None:
        self.skipped.append(SkippedEntry(printable(rel), kind, reason))

    def skip_error(self, rel: str, e: Exception) -> None:
        """An entry that raised: say what it is, never fail the listing."""
        self.skipped.append(skipped_for_error(rel, e))


def skipped_for_error(rel: str, e: Exception) -> SkippedEntry:
    name = printable(rel)
    if isinstance(e, SymlinkInPath):
        return SkippedEntry(
            name,
            "symlink",
            "a symlinked folder: dropgpu does not follow "
            "folder links (move the folder itself into the bucket)",
        )
    if isinstance(e, LinkRefused):
        cause = e.__cause__
        to_folder = isinstance(cause, NotRegularFile) and stat.S_ISDIR(cause.mode)
        hint = (
            "dropgpu does not follow folder links (move the folder itself into the bucket)"
            if to_folder
            else "link to a file inside the bucket, or copy the file in"
        )
        return SkippedEntry(name, e.kind, f"a symlink that {e.why}: {hint}")
    if isinstance(e, NotRegularFile):
        return SkippedEntry(
            name,
            "special_file",
            f"{describe_mode(e.mode)}, not a file: dropgpu reads regular files only",
        )
    if isinstance(e, OSError):
        text = e.strerror or str(e)
        if e.errno == errno.ELOOP:
            return SkippedEntry(name, "symlink_loop", "a symlink loop: fix or remove the link")
        if e.errno in (errno.EACCES, errno.EPERM):
            return SkippedEntry(
                name, "unreadable", "permission denied: let the user running dropgpu read it"
            )
        if e.errno == errno.ENAMETOOLONG:
            return SkippedEntry(name, "unaddressable_name", f"{text}: use a shorter name")
        return SkippedEntry(name, "unreadable", f"cannot be read: {text}")
    return SkippedEntry(name, "unreadable", f"cannot be read: {e}")


def _all_before(dir_key: str, start_after: str | None) -> bool:
    """True when every key under ``dir_key`` ("a/b/") sorts at or before ``start_after``.

    Keys under it all start with ``dir_key``; unless ``start_after`` itself starts
    with it, they compare like ``dir_key`` does. (str order is code-point order,
    which is UTF-8 byte order, S3's order.)
    """
    return start_after is not None and dir_key < start_after and not start_after.startswith(dir_key)


class FolderScan:
    """One listing of ``prefix`` under ``root`` (whose folder part is ``dir_segments``)."""

    def __init__(
        self,
        root: Path,
        prefix: str,
        dir_segments: list[str],
        start_after: str | None,
        being_written: BeingWritten,
    ) -> None:
        self.root = root
        self.prefix = prefix
        self.dir_segments = dir_segments
        self.start_after = start_after
        self.being_written = being_written
        self.out = Scan()

    def run(self) -> Scan:
        fd = open_root(self.root)
        try:
            for i, name in enumerate(self.dir_segments):
                rel = "/".join(self.dir_segments[: i + 1])
                try:
                    child = open_dir(fd, name, rel)
                except (FileNotFoundError, NotADirectoryError):
                    return self.out  # nothing there: an empty listing, as on S3
                except (OSError, BucketError) as e:
                    self.out.skip_error(rel + "/", e)
                    return self.out
                os.close(fd)
                fd = child
            key_prefix = "/".join(self.dir_segments) + "/" if self.dir_segments else ""
            self._folder(fd, key_prefix)
        finally:
            os.close(fd)
        return self.out

    def _folder(self, fd: int, key_prefix: str) -> None:
        try:
            it = os.scandir(fd)
        except OSError as e:
            self.out.skip_error(key_prefix or "./", e)
            return
        with it:
            while True:
                try:
                    entry = next(it)
                except StopIteration:
                    return
                except OSError as e:  # the folder went bad half-way (EIO, a network mount)
                    self.out.skip_error(key_prefix or "./", e)
                    return
                key = key_prefix + entry.name
                try:
                    self._entry(fd, entry, key)
                except FileNotFoundError:
                    continue  # deleted while we listed
                except (OSError, BucketError) as e:
                    self.out.skip_error(key, e)

    def _entry(self, fd: int, entry: os.DirEntry[str], key: str) -> None:
        name = entry.name
        if key == STATE_DIR:
            return
        if entry.is_dir(follow_symlinks=False):
            self._subfolder(fd, name, key + "/")
            return
        if not key.startswith(self.prefix):
            return
        if self.start_after is not None and key <= self.start_after:
            return  # not hashed, not even stat'ed
        if TMP_RE.match(name):
            return  # a write of ours in flight
        problem = name_problem(name)
        if problem:
            self.out.skip(key, "unaddressable_name", _rename_hint(problem))
            return
        segments = key.split("/")  # its folders were checked on the way down
        reopen = partial(open_regular, self.root, segments)  # for hashing, after the walk
        if entry.is_symlink():
            # A file link counts when it leads to a regular file inside the bucket,
            # resolved by our own walk (the same one a read uses).
            link_fd = reopen()
            try:
                st = FileStat.of(os.fstat(link_fd))
            finally:
                os.close(link_fd)
            probe_open = reopen
        else:
            raw = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(raw.st_mode):
                raise NotRegularFile(key, raw.st_mode)
            st = FileStat.of(raw)
            probe_open = partial(open_file_at, fd, name, key)  # fd is open during the walk only
        writing = self.being_written(key, st, probe_open)
        self.out.found.append(Found(key, reopen, st, writing))

    def _subfolder(self, fd: int, name: str, sub: str) -> None:
        # Only descend where keys can still start with the prefix and sort after start_after.
        if not (sub.startswith(self.prefix) or self.prefix.startswith(sub)):
            return
        if _all_before(sub, self.start_after):
            return
        problem = name_problem(name)
        if problem:
            self.out.skip(sub, "unaddressable_name", _rename_hint(problem))
            return
        try:
            child = open_dir(fd, name, sub.rstrip("/"))
        except (FileNotFoundError, NotADirectoryError):
            return  # gone, or replaced by a file, since scandir saw it
        except (OSError, BucketError) as e:
            self.out.skip_error(sub, e)
            return
        try:
            self._folder(child, sub)
        finally:
            os.close(child)


def _rename_hint(problem: str) -> str:
    return f"its name {problem}, so it cannot be a key: rename it"
