"""The local watch loop: tick, feed idle workers, handle Ctrl-C cleanly.

First Ctrl-C: stop claiming, let running jobs finish and commit.
Second Ctrl-C: kill the workers and release their claims so any watcher can
retry them at once (a released attempt does not count against max_attempts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.jobs.claims import release_claim
from handlers.jobs.failures import record_transient_failure
from handlers.jobs.outcome import JobOutcome, JobStatus
from handlers.jobs.spec import JobSpec, bound_to_job
from handlers.jobs.webhooks import drain_notifications
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketConfigError, BucketError
from watcher.config import Config
from watcher.local.pool import LocalWorkerPool
from watcher.tick import TickReport, run_tick

log: FilteringBoundLogger = structlog.get_logger(__name__)
POLL_SECONDS = 0.2


@dataclass(slots=True)
class WatchSummary:
    outcomes: Counter[str] = field(default_factory=Counter)
    claimed: int = 0
    ticks: int = 0
    released: int = 0
    failed_manifests: list[str] = field(default_factory=list)
    succeeded_manifests: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StopSignal:
    graceful: asyncio.Event = field(default_factory=asyncio.Event)
    force: asyncio.Event = field(default_factory=asyncio.Event)

    def press(self) -> None:
        if self.graceful.is_set():
            self.force.set()
        else:
            self.graceful.set()


async def _release(bucket: Bucket, jobs: list[JobSpec]) -> int:
    released = 0
    for spec in jobs:
        if await release_claim(bucket, spec.ref, spec.attempt):
            released += 1
    return released


async def _worker_died(bucket: Bucket, spec: JobSpec, exitcode: int | None) -> JobOutcome:
    """The job of a dead worker failed transiently: retry it (or give up), as the runner would."""
    with bound_to_job(spec, "watcher"):
        return await record_transient_failure(
            bucket,
            spec,
            f"worker process died (exit code {exitcode})",
            device=None,
            worker="watcher",
        )


def _record(summary: WatchSummary, spec: JobSpec, outcome: JobOutcome) -> None:
    summary.outcomes[outcome.status] += 1
    if outcome.status == JobStatus.SUCCEEDED and outcome.manifest_key:
        summary.succeeded_manifests.append(outcome.manifest_key)
    elif outcome.status == JobStatus.FAILED and outcome.manifest_key:
        summary.failed_manifests.append(outcome.manifest_key)


async def watch(
    bucket: Bucket,
    config: Config,
    pool: LocalWorkerPool,
    *,
    once: bool,
    interval: float,
    stop: StopSignal,
) -> WatchSummary:
    try:
        return await _watch(bucket, config, pool, once=once, interval=interval, stop=stop)
    finally:
        # Webhooks for give-ups the tick committed; bounded, never blocks for long.
        await drain_notifications(timeout=25)


async def _watch(
    bucket: Bucket,
    config: Config,
    pool: LocalWorkerPool,
    *,
    once: bool,
    interval: float,
    stop: StopSignal,
) -> WatchSummary:
    summary = WatchSummary()
    next_tick = 0.0
    last: TickReport | None = None
    max_settle = max((r.settle_seconds for r in config.enabled_routes()), default=0.0)
    storage_failures = 0
    while True:
        events = pool.poll()
        for spec, outcome in events.finished:
            _record(summary, spec, outcome)
        for spec, exitcode in events.died:
            if spec is not None:
                outcome = await _worker_died(bucket, spec, exitcode)
                _record(summary, spec, outcome)
        freed = bool(events.finished or events.died)

        if stop.force.is_set():
            unfinished = pool.stop(kill=True)
            summary.released = await _release(bucket, unfinished)
            log.warning("stopped_now_jobs_released", released=summary.released)
            return summary
        if stop.graceful.is_set():
            if not pool.busy():
                pool.stop()
                return summary
            await _sleep_or_stop(POLL_SECONDS, stop)
            continue

        now = time.monotonic()
        free = pool.free_slots()
        more_waiting = last is not None and last.deferred > 0
        due = now >= next_tick or (freed and (once or more_waiting))
        if free > 0 and due:
            try:
                last = await run_tick(bucket, config, pool.submit, capacity=free)
                storage_failures = 0
            except BucketConfigError:
                raise
            except BucketError as exc:
                storage_failures += 1
                log.warning("tick_failed", error=str(exc), failures=storage_failures)
                if once and storage_failures >= 5:
                    raise
                next_tick = now + min(interval * storage_failures, 300)
                continue
            summary.ticks += 1
            summary.claimed += len(last.claimed)
            if last.claimed or last.gave_up or last.repaired:
                log.info("tick", **last.summary())
            next_tick = now + interval

        if (
            once
            and last is not None
            and not pool.busy()
            and not last.claimed
            and last.deferred == 0
        ):
            wait = last.next_settle_s
            if wait is not None and wait <= max_settle + 1:
                log.info("waiting_for_files_to_settle", seconds=round(wait, 1))
                await _sleep_or_stop(wait + 0.2, stop)
                next_tick = 0.0
                continue
            pool.stop()
            return summary
        await _sleep_or_stop(POLL_SECONDS if pool.busy() or once else min(interval, 1.0), stop)


async def _sleep_or_stop(seconds: float, stop: StopSignal) -> None:
    event = stop.force if stop.graceful.is_set() else stop.graceful
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
