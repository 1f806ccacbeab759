"""Is a listed file still being written? So a stalled copy is never claimed half-written.

The settle rule (an input must be ``settle_seconds`` old before it is claimed)
reads the age from ``last_modified``. A copy that stalls longer than that (a slow
network share, a paused ``cp``) leaves an old mtime on half a file. The folder
bucket therefore lists a file it sees still being written with
``last_modified`` = the listing's own clock, so it keeps settling until the
writer is done and its real age counts again.

How it tells, best first:

1. Linux file leases: ``fcntl(F_SETLEASE, F_RDLCK)`` on a read-only descriptor
   fails with EAGAIN while any process has the file open for writing. It needs
   the file to belong to this user, or CAP_LEASE (root has it), and a
   filesystem with leases (local ones do; NFS and many FUSE mounts do not). The
   lease is released at once. While it is held, a writer's open() would wait
   for its release and the kernel would signal the holder; the signal is set to
   SIGURG (ignored by default) so it can never kill the process. Each bucket
   object first checks, once, on a file of its own in ``.dropgpu/``, that a lease
   really tells a writer from none here; if not, it uses rule 2 only (a
   mechanism that always said "open" would stop every job from settling).
2. Otherwise, two looks by this bucket object: a file whose (size, mtime,
   inode, ctime) changed since the last listing is still changing.

Cost is bounded: a file is probed only when this bucket object has not already
seen it closed with exactly this stat (new, changed, or seen open last time),
so a steady folder costs no probe at all; the first listing of a process probes
each file once (about 10 µs a file on local ext4).

What remains: a writer that closed the file half-way and walked away (an
aborted copy) looks finished; where leases are unavailable, a writer that
stalls with the file open looks finished after two identical looks; other
operating systems have only the second rule. Sync tools that write to a
temporary name and rename it (rsync, rclone, most downloaders) never expose a
partial file at all.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import signal
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import structlog
from structlog.typing import FilteringBoundLogger

from infra.errors import DropgpuError
from infra.storage.etag_cache import FileStat

log: FilteringBoundLogger = structlog.get_logger(__name__)

_LEASES = sys.platform.startswith("linux") and hasattr(fcntl, "F_SETLEASE")
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)  # Linux's value on every common architecture
# A lease break is announced with a signal; SIGIO's default would end the process.
_QUIET_SIGNAL = signal.SIGURG
# Remembered looks: the route prefixes a watcher lists every tick stay in; the
# per-job prefixes a commit lists once fall out.
MAX_PREFIXES = 64


class Verdict(enum.Enum):
    OPEN = "open"  # some process has it open for writing
    CLOSED = "closed"  # nobody has it open for writing
    UNKNOWN = "unknown"  # this OS, filesystem or owner cannot tell


def write_verdict(fd: int) -> Verdict:
    """Whether any process has the file behind ``fd`` (opened O_RDONLY) open for writing."""
    if not _LEASES:
        return Verdict.UNKNOWN
    try:
        fcntl.fcntl(fd, _F_SETSIG, _QUIET_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except BlockingIOError:  # EAGAIN: open for writing somewhere
        return Verdict.OPEN
    except OSError:  # EACCES: not our file and no CAP_LEASE; EINVAL: no leases here
        return Verdict.UNKNOWN
    with contextlib.suppress(OSError):  # closing the descriptor releases it anyway
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return Verdict.CLOSED


class WriteTracker:
    """This bucket object's memory of the files it listed: stat and write verdict per key.

    ``state_dir`` is where the one-time lease self-check may create a file.
    """

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._leases: bool | None = None if _LEASES else False
        self._looks: OrderedDict[str, dict[str, tuple[FileStat, Verdict]]] = OrderedDict()
        # Route prefixes are listed in parallel threads.
        self._lock = threading.Lock()

    def look(self, prefix: str, *, remember: bool) -> Look:
        """One listing's checks; ``remember`` (a full listing) replaces the prefix's memory."""
        with self._lock:
            previous = self._looks.get(prefix, {})
        return Look(self, prefix, previous, remember)

    def _store(self, prefix: str, seen: dict[str, tuple[FileStat, Verdict]]) -> None:
        with self._lock:
            self._looks[prefix] = seen
            self._looks.move_to_end(prefix)
            while len(self._looks) > MAX_PREFIXES:
                self._looks.popitem(last=False)

    def probe(self, open_file: Callable[[], int]) -> Verdict:
        if self._leases is None:
            with self._lock:
                if self._leases is None:
                    self._leases = leases_work(self._state_dir)
                    log.debug("file_leases_checked", usable=self._leases)
        if not self._leases:
            return Verdict.UNKNOWN  # do not open what cannot be asked
        try:
            fd = open_file()
        except (OSError, DropgpuError):  # unreadable, gone or refused: hashing reports it
            return Verdict.UNKNOWN
        try:
            return write_verdict(fd)
        finally:
            os.close(fd)


def leases_work(state_dir: Path) -> bool:
    """Do leases here tell a file open for writing from a closed one? Tried on a file of ours."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        wfd, name = tempfile.mkstemp(prefix="lease-check-", dir=state_dir)
    except OSError:
        return False
    try:
        os.write(wfd, b"x")
        while_open = _verdict_of(name)
        os.close(wfd)
        wfd = -1
        return while_open is Verdict.OPEN and _verdict_of(name) is Verdict.CLOSED
    except OSError:
        return False
    finally:
        if wfd >= 0:
            os.close(wfd)
        with contextlib.suppress(OSError):
            os.unlink(name)


def _verdict_of(path: str) -> Verdict:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return write_verdict(fd)
    finally:
        os.close(fd)


class Look:
    def __init__(
        self,
        tracker: WriteTracker,
        prefix: str,
        previous: dict[str, tuple[FileStat, Verdict]],
        remember: bool,
    ) -> None:
        self._tracker = tracker
        self._prefix = prefix
        self._previous = previous
        self._remember = remember
        self._seen: dict[str, tuple[FileStat, Verdict]] = {}

    def being_written(self, key: str, st: FileStat, open_file: Callable[[], int]) -> bool:
        """True when the file is still being written; ``open_file`` opens it read-only."""
        prev = self._previous.get(key)
        if prev is not None and prev[0] == st and prev[1] is not Verdict.OPEN:
            verdict, writing = prev[1], False  # seen at this very stat, and not open
        else:
            verdict = self._tracker.probe(open_file)
            if verdict is Verdict.UNKNOWN:
                writing = prev is not None and prev[0] != st  # changed between two looks
            else:
                writing = verdict is Verdict.OPEN
        self._seen[key] = (st, verdict)
        return writing

    def done(self) -> None:
        if self._remember:
            self._tracker._store(self._prefix, self._seen)
