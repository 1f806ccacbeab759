"""Walking a folder bucket's paths without ever following a symlink.

Checking that a path *resolves* inside the bucket and then using the path is
not enough: a symlinked folder inside the bucket (``outputs/r/x.mp4 ->
../../inputs/r``) resolves inside it and still sends a write or a delete into
``inputs/``, and a link swapped in after the check is followed anyway. So every
key is walked from the bucket root one component at a time: each folder is
opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to the descriptor of its
parent, and the final operation (open, mkdir, rename, link, unlink, rmdir) is
done relative to the descriptor of the last folder. A symlink anywhere on the
way is refused (SymlinkInPath); a folder swapped for a link after it was opened
changes nothing, because the descriptor still names the real folder.

Reads may go through one kind of symlink: a *file* link whose target, resolved
here component by component (never by the kernel), is a regular file inside
the bucket. Folder links are never followed, and the target of a file link
must not pass through one.

Files are opened ``O_NONBLOCK | O_NOFOLLOW`` and checked with ``fstat`` on the
descriptor before a byte is read, so a FIFO or device swapped in at a key can
neither hang a reader nor be read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from infra.storage.errors import BucketConfigError, ObjectNotFound, UnsafeKeyError
from infra.storage.folder_keys import STATE_DIR, name_problem, printable

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
# What open(O_NOFOLLOW) answers for a symlink: ELOOP on Linux and macOS, EMLINK on
# FreeBSD; with O_DIRECTORY Linux may say ENOTDIR first. An lstat tells them apart.
_LINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR})
# A chain of file links longer than this is treated as a loop (like the kernel's 40).
MAX_LINK_HOPS = 8


class SymlinkInPath(UnsafeKeyError):
    """A component of a path is a symlink, which the folder bucket never walks through."""

    def __init__(self, rel: str) -> None:
        super().__init__(
            f"{printable(rel)!r} in the bucket folder is a symlink: the folder bucket never "
            "follows a link on the way to a key (replace it with a real folder)"
        )
        self.rel = rel


class LinkRefused(UnsafeKeyError):
    """A symlinked file that may not be read: its target is outside, missing, a loop, ..."""

    def __init__(self, rel: str, why: str, kind: str = "symlink") -> None:
        super().__init__(f"{printable(rel)!r} is a symlink that {why}")
        self.rel = rel
        self.why = why
        self.kind = kind  # "symlink" | "symlink_loop"


class NotRegularFile(ObjectNotFound):
    """Where a file was expected there is a folder, FIFO, socket or device."""

    def __init__(self, rel: str, mode: int) -> None:
        super().__init__(f"{printable(rel)!r} is {describe_mode(mode)}, not a regular file")
        self.rel = rel
        self.mode = mode


def describe_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "a special file"


def _rel(segments: Sequence[str]) -> str:
    return "/".join(segments)


def open_root(root: Path) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise BucketConfigError(
            f"bucket folder {str(root)!r} no longer exists or is not a folder"
        ) from e


def open_dir(parent: int, name: str, rel: str, *, create: bool = False) -> int:
    """The folder ``name`` in ``parent`` (made when ``create``), never through a link.

    Raises SymlinkInPath, NotADirectoryError (a file is in the way),
    FileNotFoundError, or the OSError of the open (EACCES, ...).
    """
    for _ in range(3):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # a concurrent writer made it
                os.mkdir(name, 0o777, dir_fd=parent)  # FileNotFoundError: parent pruned
        except OSError as e:
            if e.errno not in _LINK_ERRNOS:
                raise
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise SymlinkInPath(rel) from e
            if stat.S_ISDIR(st.st_mode):
                continue  # replaced by a folder meanwhile: look again
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), rel) from e
    raise FileNotFoundError(errno.ENOENT, "folder keeps changing", rel)


@contextlib.contextmanager
def folders(root: Path, segments: Sequence[str], *, create: bool = False) -> Iterator[list[int]]:
    """Descriptors of the root and of each folder ``segments`` names, walked without links.

    ``fds[i]`` is the folder ``segments[:i]``; all are closed on exit.
    """
    fds = [open_root(root)]
    try:
        for i, name in enumerate(segments):
            fds.append(open_dir(fds[-1], name, _rel(segments[: i + 1]), create=create))
        yield fds
    finally:
        for fd in reversed(fds):
            os.close(fd)


def open_file_at(parent: int, name: str, rel: str) -> int:
    """A read descriptor of the regular file ``name`` in ``parent``, blocking mode restored.

    Opening never blocks (O_NONBLOCK: a FIFO opens at once) and never follows a
    link (the OSError of a link is ELOOP-like; the caller decides); anything but a
    regular file, checked on the descriptor itself, raises NotRegularFile.
    """
    fd = os.open(name, FILE_FLAGS, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(rel, st.st_mode)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_link_error(e: OSError) -> bool:
    return e.errno in _LINK_ERRNOS


def open_regular(root: Path, segments: Sequence[str]) -> int:
    """A read descriptor of the regular file at ``segments``; a file link is followed by
    resolving its target here, only to a regular file inside the bucket.

    Raises FileNotFoundError / NotADirectoryError (no such file), NotRegularFile,
    SymlinkInPath (a folder on the way is a link), LinkRefused (a file link whose
    target is not a regular file inside the bucket), or the OSError of the open.
    """
    key_rel = _rel(segments)
    segs = list(segments)
    for hop in range(MAX_LINK_HOPS + 1):
        try:
            with folders(root, segs[:-1]) as fds:
                try:
                    return open_file_at(fds[-1], segs[-1], _rel(segs))
                except OSError as e:
                    if not is_link_error(e):
                        raise
                    st = os.stat(segs[-1], dir_fd=fds[-1], follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise
                    target = os.readlink(segs[-1], dir_fd=fds[-1])
        except (SymlinkInPath, FileNotFoundError, NotADirectoryError, NotRegularFile) as e:
            if hop == 0:
                raise
            raise LinkRefused(key_rel, _why_refused(e)) from e
        segs = resolve_link(root, segs[:-1], target, key_rel)
    raise LinkRefused(
        key_rel, f"starts a loop (or a chain of more than {MAX_LINK_HOPS} links)", "symlink_loop"
    )


def _why_refused(e: Exception) -> str:
    if isinstance(e, SymlinkInPath):
        return "leads through a symlinked folder"
    if isinstance(e, NotRegularFile):
        return f"leads to {describe_mode(e.mode)}"
    return "is dangling (its target does not exist)"


def resolve_link(root: Path, folder: Sequence[str], target: str, rel: str) -> list[str]:
    """The bucket path a file link in ``folder`` names, resolved by text.

    Text is enough: ``folder`` was walked without links, so ``..`` in the target
    means exactly its parent. Outside the bucket, the bucket's own state
    (``.dropgpu/``) or a name that is not a key: LinkRefused.
    """
    base: list[str]
    root_text = str(root)
    if target.startswith("/"):
        if target != root_text and not target.startswith(root_text.rstrip("/") + "/"):
            raise LinkRefused(rel, "leads outside the bucket folder")
        base, parts = [], target[len(root_text) :].split("/")
    else:
        base, parts = list(folder), target.split("/")
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not base:
                raise LinkRefused(rel, "leads outside the bucket folder")
            base.pop()
        else:
            base.append(part)
    if not base:
        raise LinkRefused(rel, "leads to the bucket folder itself")
    if base[0] == STATE_DIR:
        raise LinkRefused(rel, f"leads into {STATE_DIR}/, the folder bucket's own state")
    for part in base:
        if name_problem(part):
            raise LinkRefused(rel, "leads to a name that cannot be a key")
    return base
