"""Claims won ahead of a free worker: how many to win, and keeping them alive while they wait.

A tick LISTs every route, which costs far more than a trivial job: claiming only
one job per idle worker left the workers waiting on LISTs (5,000 tiny files took
about 25 minutes). So a tick claims ahead into the pool's bounded queue.

How far ahead (:class:`ClaimAhead`): about the work the workers get through in a
short horizon (a second, or two ticks when ticks are slower), estimated from
recent jobs; zero for slow jobs, where a queued claim would only wait (and
keep other watchers from a job it cannot start), and never more than the
pool's bound.

Keeping them alive (:class:`QueueKeeper`): a queued claim is a claim like any
other, judged stale by its LastModified. The keeper rewrites each one that waits
longer than its heartbeat interval, as the lease of a running job would, and
releases (``attempt-n.released``, no attempt used) any that has waited a whole
lease or may already look stale to other watchers; the pool never starts those.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.jobs.claims import release_claim, write_heartbeat
from handlers.jobs.spec import JobSpec, bound_to_job
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError
from watcher.local.pool import LocalWorkerPool, Queued

log: FilteringBoundLogger = structlog.get_logger(__name__)
MIN_HORIZON_S = 1.0
KEEP_INTERVAL_S = 0.2
_SMOOTHING = 0.2  # weight of the newest sample in the moving averages


class ClaimAhead:
    """The queue depth to aim for, from recent job and tick durations."""

    def __init__(self) -> None:
        self.job_s: float | None = None
        self.tick_s: float | None = None

    @staticmethod
    def _mean(old: float | None, new: float) -> float:
        return new if old is None else old + _SMOOTHING * (new - old)

    def job_finished(self, busy_s: float) -> None:
        self.job_s = self._mean(self.job_s, max(0.0, busy_s))

    def tick_took(self, seconds: float) -> None:
        self.tick_s = self._mean(self.tick_s, max(0.0, seconds))

    def target(self, workers: int) -> int:
        """Jobs to hold queued beyond the busy workers; 0 until a job has been timed."""
        if self.job_s is None or workers <= 0:
            return 0
        horizon = max(MIN_HORIZON_S, 2 * (self.tick_s or 0.0))
        rate = workers / max(self.job_s, 1e-3)
        return math.floor(rate * horizon + 0.5)


async def _beat(bucket: Bucket, spec: JobSpec) -> bool:
    try:
        await write_heartbeat(
            bucket,
            spec.claim_key,
            phase="queued",
            progress=0.0,
            job_id=spec.ref.job_id,
            input_key=spec.ref.input_key,
            attempt=spec.attempt,
        )
    except BucketError as exc:
        with bound_to_job(spec, "watcher"):
            log.warning("queued_claim_heartbeat_failed", error=str(exc))
        return False
    return True


async def release_unstarted(bucket: Bucket, specs: list[JobSpec]) -> int:
    """Give back claims that never started; returns how many were released."""
    released = 0
    for spec in specs:
        with bound_to_job(spec, "watcher"):
            if await release_claim(bucket, spec.ref, spec.attempt):
                released += 1
    return released


class QueueKeeper:
    """A task that heartbeats the pool's queued claims and releases the expired ones."""

    def __init__(self, bucket: Bucket, pool: LocalWorkerPool) -> None:
        self.bucket = bucket
        self.pool = pool
        self.released = 0
        self._halt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop after the round in progress: a heartbeat PUT is never cut off mid-flight."""
        self._halt.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._halt.is_set():
            await self.keep_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._halt.wait(), KEEP_INTERVAL_S)

    async def keep_once(self) -> None:
        due = self.pool.checkout_due(time.monotonic())
        if due:
            await asyncio.gather(*(self._renew(q) for q in due))
            self.pool.checkin(due)
        expired = self.pool.take_expired(time.monotonic())
        if expired:
            log.warning("queued_claims_expired_releasing", jobs=len(expired))
            self.released += await release_unstarted(self.bucket, [q.spec for q in expired])

    async def _renew(self, q: Queued) -> None:
        sent = time.monotonic()
        if await _beat(self.bucket, q.spec):
            q.written_at = sent  # it landed no earlier than it was sent
