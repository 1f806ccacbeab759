"""Local execution: long-lived worker processes that keep warm state across jobs.

Each worker owns one bucket client and one JobRunner (whose cache holds loaded
models and probes) for its whole life. The watcher hands a job to an idle
worker over that worker's own queue, so when a worker dies the watcher knows
exactly which job it held.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import signal
import tempfile
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, TypeAlias

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.jobs.outcome import JobOutcome, JobStatus
from handlers.jobs.spec import JobSpec

log: FilteringBoundLogger = structlog.get_logger(__name__)
_STOP = "stop"


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


# A worker's inbox (job spec dicts, or _STOP) and the pool's shared outbox:
# ("ready", index, None, None) once started, ("done", index, job id, outcome) per job.
Tasks: TypeAlias = "Queue[Any]"
Results: TypeAlias = "Queue[tuple[str, int, str | None, JobOutcome | None]]"


def _worker_main(index: int, options: WorkerOptions, tasks: Tasks, results: Results) -> None:
    # The watcher decides what Ctrl-C means; a worker must not die of the
    # terminal's SIGINT in the middle of an upload.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from infra.log import configure_logging

    # The CLI's --log-format/--log-level reach workers through DROPGPU_LOG_* env vars.
    configure_logging()
    asyncio.run(_worker_loop(index, options, tasks, results))


async def _worker_loop(index: int, options: WorkerOptions, tasks: Tasks, results: Results) -> None:
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
        results.put(("ready", index, None, None))
        while True:
            item = await asyncio.to_thread(tasks.get)
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
            results.put(("done", index, spec.ref.job_id, outcome))


@dataclass(slots=True)
class _Worker:
    index: int
    process: BaseProcess
    tasks: Tasks
    job: JobSpec | None = None
    ready: bool = False


@dataclass(slots=True)
class PoolEvents:
    finished: list[tuple[JobSpec, JobOutcome]] = field(default_factory=list)
    died: list[tuple[JobSpec | None, int | None]] = field(default_factory=list)


class LocalWorkerPool:
    def __init__(self, size: int, options: WorkerOptions) -> None:
        self.size = size
        self.options = options
        # spawn, not fork: the watcher holds an event loop and open sockets.
        self._ctx = mp.get_context("spawn")
        self._results = self._ctx.Queue()
        self._workers: list[_Worker] = []

    def _spawn(self, index: int) -> _Worker:
        tasks = self._ctx.Queue()
        proc = self._ctx.Process(
            target=_worker_main,
            args=(index, self.options, tasks, self._results),
            name=f"dropgpu-worker-{index}",
            daemon=True,
        )
        proc.start()
        return _Worker(index, proc, tasks)

    def start(self) -> None:
        Path(self.options.scratch_root).mkdir(parents=True, exist_ok=True)
        self._workers = [self._spawn(i) for i in range(self.size)]

    def _idle(self, w: _Worker) -> bool:
        # Only a started worker counts: a claim handed to a worker still importing
        # would age without heartbeats and could be taken over by another watcher.
        return w.ready and w.job is None and w.process.is_alive()

    def free_slots(self) -> int:
        return sum(1 for w in self._workers if self._idle(w))

    def busy(self) -> list[JobSpec]:
        return [w.job for w in self._workers if w.job is not None]

    def submit(self, spec: JobSpec) -> None:
        for w in self._workers:
            if self._idle(w):
                w.job = spec
                w.tasks.put(spec.to_dict())
                return
        # A worker counted free when the tick began died (or is restarting) since:
        # the claim is already won, so hand it to a job-less slot anyway. A live
        # worker takes it once started; a dead one is reported by poll() with this
        # job, which then gets a transient failure and is retried.
        for w in self._workers:
            if w.job is None:
                log.warning("submitted_to_worker_not_ready", worker=w.index)
                w.job = spec
                w.tasks.put(spec.to_dict())
                return
        raise RuntimeError("no idle worker (the tick claimed more than the free capacity)")

    def poll(self) -> PoolEvents:
        """Collect finished jobs; respawn workers that died and report their jobs."""
        events = PoolEvents()
        while True:
            try:
                kind, index, _job_id, outcome = self._results.get_nowait()
            except queue.Empty:
                break
            worker = self._workers[index]
            if kind == "ready":
                worker.ready = True
            elif kind == "done" and worker.job is not None:
                events.finished.append((worker.job, outcome))
                worker.job = None
        for i, w in enumerate(self._workers):
            if not w.process.is_alive():
                log.error(
                    "worker_died",
                    worker=w.index,
                    exitcode=w.process.exitcode,
                    job_id=w.job.ref.job_id if w.job else None,
                )
                events.died.append((w.job, w.process.exitcode))
                self._workers[i] = self._spawn(w.index)
        return events

    def stop(self, *, kill: bool = False, timeout: float = 30.0) -> list[JobSpec]:
        """Stop workers. Returns the jobs that were still running (when killed)."""
        unfinished = self.busy()
        for w in self._workers:
            if kill:
                w.process.kill()
            else:
                w.tasks.put(_STOP)
        for w in self._workers:
            w.process.join(timeout=timeout)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
        return unfinished if kill else []
