"""Keep worker processes (and the ffmpeg they start) out of reach of the terminal's signals.

A terminal sends Ctrl-C's SIGINT to its whole foreground process group, and
``kill -- -PGID`` or a supervisor's group kill does the same with SIGTERM. If
the workers shared the watcher's group, ffmpeg would stop mid-encode (exit 255)
and the job would burn an attempt although the user asked for "finish, then
stop". So each worker starts its own session (a new process group), answers
SIGINT/SIGTERM sent to it directly with nothing, and lets the watcher decide:
the watcher stops or kills the worker's whole group itself.

Leaving the watcher's group also means the group kill no longer takes the
workers along when the watcher dies; so a worker watches its parent and, when it
is gone, kills its own group (itself and its ffmpeg) at once.

Parent side: :func:`signals_blocked` (around the spawn, so no signal lands in
the window before the child leaves the group) and :func:`kill_group`. Child
side: :func:`detach_worker`, the first thing a worker does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

import structlog
from structlog.typing import FilteringBoundLogger

log: FilteringBoundLogger = structlog.get_logger(__name__)

# The signals the watcher interprets (once: finish; twice: release). A worker never acts on them.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
PARENT_CHECK_S = 0.2


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread; a process started meanwhile inherits the mask.

    Signals that arrive meanwhile stay pending for the watcher (or reach its other
    threads, which forward them to the event loop), so none is lost.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ignore(signum: int, _frame: FrameType | None) -> None:
    # A Python handler, not SIG_IGN: an ignored disposition would be inherited by
    # the programs a handler runs (and break their own terminate()); a handler is
    # reset to the default by exec.
    log.debug("stop_signal_left_to_watcher", signal=signal.Signals(signum).name)


def detach_worker(parent_pid: int) -> None:
    """Run first in a worker: own session, stop signals left to the watcher, die with it.

    The worker was started with the stop signals blocked (:func:`signals_blocked`):
    one sent to the watcher's group before ``setsid`` waits, pending, and is
    discarded by the handler once unblocked.
    """
    os.setsid()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _ignore)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    threading.Thread(
        target=_die_with_parent, args=(parent_pid,), name="dropgpu-parent-watch", daemon=True
    ).start()


def _die_with_parent(parent_pid: int) -> None:
    """Poll the parent; once it is gone, kill this worker's group (the worker and its ffmpeg).

    Polling ``getppid`` rather than Linux's PR_SET_PDEATHSIG: a death signal would
    kill the worker alone and leave its ffmpeg running, and it fires when the
    parent *thread* that spawned the worker ends, not the parent process.
    """
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    if os.getpgid(0) == os.getpid():  # our own group: never the terminal's
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


def kill_group(pid: int | None) -> None:
    """SIGKILL the process group a detached worker leads (the worker and its children).

    Safe for a worker that is not reaped yet, and for one whose group may still
    have members (its ffmpeg): the kernel reuses no pid while a group of that id
    exists. A worker killed before it detached leads no group (nothing to do).
    """
    if pid is None or pid <= 1:  # killpg(0) would be our own group
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
