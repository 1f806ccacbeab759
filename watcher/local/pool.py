"""Local execution: long-lived worker processes that keep warm state across jobs.

Each worker owns one bucket client and one JobRunner (whose cache holds loaded
models and probes) for its whole life, and talks to the watcher over its own
pipe, so when a worker dies the watcher knows exactly which job it held.

Won claims wait in a small local queue (claimed ahead, so a worker that frees
up gets its next job at once instead of after the next LIST); the pipe's reader
runs on the watcher's event loop and hands the next queued job to a worker the
moment it reports the last one done, even while a tick is listing. The queue's
claims are the watcher's to keep alive (watcher/local/queued.py heartbeats
them); the pool never dispatches one that may already look stale to others.

Workers run in their own sessions (watcher/local/isolation.py): a terminal's or
a supervisor's group signal reaches only the watcher, which stops or kills the
workers' groups (ffmpeg included) itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import multiprocessing as mp
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.jobs.outcome import JobOutcome, JobStatus
from handlers.jobs.spec import JobSpec
from watcher.local.isolation import detach_worker, kill_group, signals_blocked

log: FilteringBoundLogger = structlog.get_logger(__name__)
_STOP = "stop"
# Claimed-but-not-started jobs the pool holds at most, per worker (the default bound).
QUEUE_PER_WORKER = 8
# A queued claim whose last write is older than this share of the lease may look
# stale to another watcher already: it is released, never run (as the lease fences itself).
STALE_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    bucket: str
    endpoint_url: str | None
    scratch_root: str
    device: str | None = None


def default_worker_count() -> int:
    """One per GPU when CUDA is visible, else about half the cores (ffmpeg threads itself)."""
    from gpu.device import nvidia_driver_present

    if nvidia_driver_present():
        try:
            import torch

            if torch.cuda.is_available():
                return max(1, torch.cuda.device_count())
        except ImportError:
            pass
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def default_scratch_root() -> Path:
    return Path(tempfile.gettempdir()) / "dropgpu-scratch"


# Worker -> watcher messages: ("ready", None, None) once started, ("done", job id, outcome)
# per job. Watcher -> worker: a job spec dict, or _STOP.
Message = tuple[str, str | None, JobOutcome | None]


def _worker_main(index: int, options: WorkerOptions, conn: Connection, parent_pid: int) -> None:
    # Own session first: the terminal's Ctrl-C and a group SIGTERM are the watcher's to decide.
    detach_worker(parent_pid)
    from infra.log import configure_logging

    # The CLI's --log-format/--log-level reach workers through DROPGPU_LOG_* env vars.
    configure_logging()
    asyncio.run(_worker_loop(index, options, conn))


async def _worker_loop(index: int, options: WorkerOptions, conn: Connection) -> None:
    from gpu.device import select_device
    from handlers.jobs.runner import JobRunner
    from handlers.jobs.webhooks import drain_notifications
    from infra.storage.url import open_bucket

    device = select_device(options.device)
    worker_name = f"{os.uname().nodename}:{os.getpid()}/w{index}"
    # This process is this worker: every line it logs names it (the runner adds the job).
    structlog.contextvars.bind_contextvars(worker=worker_name, device=device.name)
    async with open_bucket(options.bucket, endpoint_url=options.endpoint_url) as bucket:
        runner = JobRunner(
            bucket, scratch_root=Path(options.scratch_root), device=device, worker_name=worker_name
        )
        if not _tell_watcher(conn, ("ready", None, None)):
            return
        while True:
            try:
                item = await asyncio.to_thread(conn.recv)
            except (EOFError, OSError):  # the watcher is gone; its death watch kills us too
                item = _STOP
            if item == _STOP:
                # Webhooks run in the background; let them finish (bounded) before exit.
                await drain_notifications(timeout=25)
                break
            spec = JobSpec.from_dict(item)
            try:
                outcome = await runner.run(spec)
            except BaseException as exc:  # the runner catches errors; this is a last resort
                log.exception("runner_crashed", job_id=spec.ref.job_id)
                outcome = JobOutcome(JobStatus.RETRY, f"runner crashed: {exc}")
            if not _tell_watcher(conn, ("done", spec.ref.job_id, outcome)):
                # The job is committed (or recorded) in the bucket already; only the
                # watcher that would hear of it is gone. Its death watch ends us too.
                await drain_notifications(timeout=25)
                break


def _tell_watcher(conn: Connection, message: Message) -> bool:
    """Send to the watcher; False when it is gone (killed: the pipe is closed)."""
    try:
        conn.send(message)
    except (BrokenPipeError, EOFError, ConnectionResetError):
        log.info("watcher_gone_worker_exits")
        return False
    return True


@dataclass(slots=True)
class Queued:
    """A won claim waiting for a worker."""

    spec: JobSpec
    queued_at: float  # time.monotonic() when the claim was won
    written_at: float  # when the claim was last written (created or heartbeat sent)

    def write_age(self, now: float) -> float:
        return now - self.written_at

    def may_look_stale(self, now: float) -> bool:
        return self.write_age(now) > self.spec.lease_ttl_seconds * STALE_SHARE


@dataclass(slots=True)
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    job: JobSpec | None = None
    started: float = 0.0  # when ``job`` was handed over
    ready: bool = False
    gone: bool = False  # its pipe is closed: it died or is dying

    def idle(self) -> bool:
        return self.ready and self.job is None and not self.gone


@dataclass(slots=True)
class PoolEvents:
    finished: list[tuple[JobSpec, JobOutcome]] = field(default_factory=list)
    died: list[tuple[JobSpec | None, int | None]] = field(default_factory=list)
    # Seconds each finished job held its worker (for the claim-ahead estimate).
    busy_s: list[float] = field(default_factory=list)


class LocalWorkerPool:
    """``size`` workers and a queue of at most ``queue_limit`` claimed-but-not-started jobs.

    ``queue_limit=0`` is capacity-limited claiming: only as many claims as idle workers.
    """

    def __init__(
        self, size: int, options: WorkerOptions, *, queue_limit: int | None = None
    ) -> None:
        self.size = size
        self.options = options
        self.queue_limit = QUEUE_PER_WORKER * size if queue_limit is None else max(0, queue_limit)
        # spawn, not fork: the watcher holds an event loop and open sockets.
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._queue: deque[Queued] = deque()
        self._out: int = 0  # queued claims checked out for a heartbeat
        self._expired: list[Queued] = []
        self._events = PoolEvents()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.notify: Callable[[], None] = lambda: None  # called when there is news
        self._cleanup_registered = False

    # -- workers ---------------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        ours, theirs = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(index, self.options, theirs, os.getpid()),
            name=f"dropgpu-worker-{index}",
            daemon=True,
        )
        # Blocked until the worker has left our process group (isolation.detach_worker).
        with signals_blocked():
            proc.start()
        theirs.close()  # so the worker's death reads as EOF here
        worker = _Worker(index, proc, ours)
        self._watch(worker)
        return worker

    def _watch(self, w: _Worker) -> None:
        if self._loop is None:
            return
        self._loop.add_reader(w.conn.fileno(), self._on_message, w)
        self._loop.add_reader(w.process.sentinel, self._on_exit, w)

    def _unwatch(self, w: _Worker) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(w.conn.fileno())
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(w.process.sentinel)

    def start(self) -> None:
        """Start the workers; inside an event loop, results are read the moment they come."""
        Path(self.options.scratch_root).mkdir(parents=True, exist_ok=True)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # poll() still reads everything, only later
        if not self._cleanup_registered:
            # Runs before multiprocessing's own exit hook, which would SIGTERM and then
            # wait forever for workers that leave SIGTERM to the watcher.
            atexit.register(self._kill_all)
            self._cleanup_registered = True
        self._workers = [self._spawn(i) for i in range(self.size)]

    def _drain(self, w: _Worker) -> None:
        """Read every message the worker has sent so far."""
        try:
            while not w.gone and w.conn.poll():
                kind, _job_id, outcome = w.conn.recv()
                if kind == "ready":
                    w.ready = True
                elif kind == "done" and w.job is not None and outcome is not None:
                    self._events.finished.append((w.job, outcome))
                    self._events.busy_s.append(time.monotonic() - w.started)
                    w.job = None
        except (EOFError, OSError):
            w.gone = True
            self._unwatch(w)

    def _on_message(self, w: _Worker) -> None:
        self._drain(w)
        self._dispatch()
        self.notify()

    def _on_exit(self, w: _Worker) -> None:
        self._drain(w)
        w.gone = True
        self._unwatch(w)
        self.notify()

    # -- the queue -------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> None:
        """Queue a won claim; it goes to a worker as soon as one is idle (maybe now)."""
        now = time.monotonic()
        self._queue.append(Queued(spec, now, now))
        self._dispatch()

    def _dispatch(self) -> None:
        now = time.monotonic()
        for w in self._workers:
            while w.idle() and self._queue:
                item = self._queue.popleft()
                if item.may_look_stale(now):
                    self._expired.append(item)
                    continue
                try:
                    w.conn.send(item.spec.to_dict())
                except OSError:  # it died: the job stays queued for another worker
                    self._queue.appendleft(item)
                    w.gone = True
                    self._unwatch(w)
                    break
                w.job, w.started = item.spec, now

    def checkout_due(self, now: float) -> list[Queued]:
        """Take out the queued claims due for a heartbeat (none is dispatched meanwhile).

        While its heartbeat is in flight a claim must not start: the job could
        commit and delete the claim before the PUT lands, which would resurrect it.
        """
        due = [q for q in self._queue if q.write_age(now) >= q.spec.heartbeat_seconds]
        if due:
            ids = {id(q) for q in due}
            self._queue = deque(q for q in self._queue if id(q) not in ids)
        self._out += len(due)
        return due

    def checkin(self, items: list[Queued]) -> None:
        """Put heartbeaten claims back at the head of the queue (they are the oldest)."""
        self._out -= len(items)
        self._queue.extendleft(reversed(items))
        self._dispatch()

    def take_expired(self, now: float) -> list[Queued]:
        """Queued claims that may look stale, or have waited a whole lease unstarted."""
        keep: deque[Queued] = deque()
        for q in self._queue:
            late = q.may_look_stale(now) or now - q.queued_at > q.spec.lease_ttl_seconds
            (self._expired if late else keep).append(q)
        self._queue = keep
        expired, self._expired = self._expired, []
        return expired

    def take_queued(self) -> list[JobSpec]:
        """Empty the queue (stopping): these jobs never started."""
        queued = [q.spec for q in self._queue] + [q.spec for q in self._expired]
        self._queue.clear()
        self._expired = []
        return queued

    # -- the watcher's view ------------------------------------------------------------

    def ready_workers(self) -> int:
        return sum(1 for w in self._workers if w.ready and not w.gone)

    def busy(self) -> list[JobSpec]:
        """Jobs running in a worker now."""
        return [w.job for w in self._workers if w.job is not None]

    def queued(self) -> int:
        return len(self._queue) + self._out

    def outstanding(self) -> int:
        """Won claims not finished yet: running or queued."""
        return len(self.busy()) + self.queued()

    def room(self, queue_target: int) -> int:
        """How many claims a tick may win now: idle workers plus queue room.

        Nothing while no worker has started: a queue that no worker takes would
        only age its claims.
        """
        ready = self.ready_workers()
        if ready == 0:
            return 0
        target = min(self.queue_limit, max(0, queue_target))
        return max(0, ready + target - len(self.busy()) - self.queued())

    def poll(self) -> PoolEvents:
        """Collect finished jobs; respawn workers that died and report their jobs."""
        died: list[tuple[JobSpec | None, int | None]] = []
        for i, w in enumerate(self._workers):
            self._drain(w)
            if w.process.is_alive():
                continue
            self._drain(w)  # what it sent between the first read and its death
            log.error(
                "worker_died",
                worker=w.index,
                exitcode=w.process.exitcode,
                job_id=w.job.ref.job_id if w.job else None,
            )
            kill_group(w.process.pid)  # its ffmpeg, if any, would be orphaned otherwise
            self._unwatch(w)
            w.conn.close()
            died.append((w.job, w.process.exitcode))
            self._workers[i] = self._spawn(w.index)
        events, self._events = self._events, PoolEvents()
        events.died = died
        self._dispatch()
        return events

    # -- stopping ----------------------------------------------------------------------

    def stop(self, *, kill: bool = False, timeout: float = 30.0) -> list[JobSpec]:
        """Stop workers. Returns the jobs that were still running (when killed).

        Graceful: each worker finishes its job and exits; one still alive after
        ``timeout`` is killed. Killed: each worker's whole group goes at once.
        Queued jobs stay queued (``take_queued``); jobs reported done meanwhile are
        in the next ``poll()``.
        """
        for w in self._workers:
            self._unwatch(w)
            if kill:
                self._kill(w)
            else:
                with contextlib.suppress(OSError):
                    w.conn.send(_STOP)
        for w in self._workers:
            w.process.join(timeout=timeout)
            if w.process.is_alive():
                self._kill(w)
                w.process.join(5)
        for w in self._workers:
            self._drain(w)  # a job reported done before the end is finished, not unfinished
            w.conn.close()
        unfinished = [w.job for w in self._workers if w.job is not None]
        self._workers = []
        return unfinished if kill else []

    @staticmethod
    def _kill(w: _Worker) -> None:
        if w.process.exitcode is None:  # not reaped: its pid is still its own
            kill_group(w.process.pid)
            with contextlib.suppress(OSError):
                w.process.kill()

    def _kill_all(self) -> None:
        for w in self._workers:
            self._kill(w)
