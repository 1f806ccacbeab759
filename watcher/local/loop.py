"""The local watch loop: tick, keep the workers fed, handle Ctrl-C and SIGTERM cleanly.

First signal (Ctrl-C or SIGTERM): stop claiming, give back the claims still
queued (they never started), let running jobs finish and commit.
Second signal: kill the workers (their whole process groups, ffmpeg included)
and release their claims so any watcher can retry them at once (a released
attempt does not count against max_attempts).

Ticks claim ahead into the pool's bounded queue (watcher/local/queued.py); the
pool hands a queued job to a worker the moment one frees, and the loop ticks
again as soon as the queue runs low while the last tick left claimable work
behind, instead of sleeping until the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.jobs.failures import record_transient_failure
from handlers.jobs.outcome import JobOutcome, JobStatus
from handlers.jobs.spec import JobSpec, bound_to_job
from handlers.jobs.webhooks import drain_notifications
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketConfigError, BucketError
from watcher.config import Config
from watcher.local.pool import LocalWorkerPool
from watcher.local.queued import ClaimAhead, QueueKeeper, release_unstarted
from watcher.state import DecisionState
from watcher.tick import TickReport, run_tick

log: FilteringBoundLogger = structlog.get_logger(__name__)
# The longest the loop sleeps without news (pool results and signals wake it at once).
MAX_WAIT_S = 1.0


@dataclass(slots=True)
class WatchSummary:
    outcomes: Counter[str] = field(default_factory=Counter)
    claimed: int = 0
    ticks: int = 0
    released: int = 0
    # Stopped by a second signal: running (and queued) jobs were given back unfinished.
    forced: bool = False
    failed_manifests: list[str] = field(default_factory=list)
    succeeded_manifests: list[str] = field(default_factory=list)
    # At exit, from the last tick: jobs waiting for a scheduled retry, and the soonest.
    retries_waiting: int = 0
    next_retry_at: datetime | None = None

    def lines(self, now: datetime | None = None) -> list[str]:
        """What `dropgpu watch` prints when it ends (stderr)."""
        done = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items())) or "nothing to do"
        lines = [f"dropgpu: {done}"]
        if self.released:
            lines.append(
                f"  released {self.released} unfinished job(s): the next `dropgpu watch` runs "
                "them again, without using up an attempt"
            )
        lines += [f"  failed: {key}" for key in self.failed_manifests]
        if self.retries_waiting and self.next_retry_at is not None:
            now = now or datetime.now(UTC)
            wait = max(0, round((self.next_retry_at - now).total_seconds()))
            n = self.retries_waiting
            jobs = "1 job waits" if n == 1 else f"{n} jobs wait"
            lines.append(
                f"  {jobs} for a retry (no manifest yet), the first due in {wait} s "
                f"(at {self.next_retry_at:%Y-%m-%d %H:%M:%S} UTC): a `dropgpu watch` running "
                "then picks it up; `--once --wait-retries` waits for it"
            )
        return lines


@dataclass(slots=True)
class StopSignal:
    graceful: asyncio.Event = field(default_factory=asyncio.Event)
    force: asyncio.Event = field(default_factory=asyncio.Event)

    def press(self) -> None:
        if self.graceful.is_set():
            self.force.set()
        else:
            self.graceful.set()


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


def _note_retries(summary: WatchSummary, last: TickReport | None) -> None:
    if last is None or last.next_retry_s is None:
        return
    summary.retries_waiting = last.states[DecisionState.RETRY_WAIT]
    summary.next_retry_at = datetime.now(UTC) + timedelta(seconds=last.next_retry_s)


async def watch(
    bucket: Bucket,
    config: Config,
    pool: LocalWorkerPool,
    *,
    once: bool,
    interval: float,
    stop: StopSignal,
    wait_retries_s: float | None = None,
) -> WatchSummary:
    """Run until stopped (or, ``once``, until nothing is left to do).

    ``wait_retries_s`` (with ``once``): also wait for scheduled retries due within
    that many seconds, so a transient failure ends with its manifest.
    """
    keeper = QueueKeeper(bucket, pool)
    keeper.start()
    try:
        return await _watch(
            bucket,
            config,
            pool,
            keeper,
            once=once,
            interval=interval,
            stop=stop,
            wait_retries_s=wait_retries_s,
        )
    finally:
        await keeper.stop()
        # Left queued only when the loop failed (e.g. the bucket became unusable):
        # never started, so given back rather than left to expire as a crash.
        await release_unstarted(bucket, pool.take_queued())
        # Webhooks for give-ups the tick committed; bounded, never blocks for long.
        await drain_notifications(timeout=25)


async def _watch(
    bucket: Bucket,
    config: Config,
    pool: LocalWorkerPool,
    keeper: QueueKeeper,
    *,
    once: bool,
    interval: float,
    stop: StopSignal,
    wait_retries_s: float | None,
) -> WatchSummary:
    summary = WatchSummary()
    wake = asyncio.Event()
    pool.notify = wake.set
    ahead = ClaimAhead()
    next_tick = 0.0
    last: TickReport | None = None
    finished_since_tick = False
    stopping = False
    max_settle = max((r.settle_seconds for r in config.enabled_routes()), default=0.0)
    storage_failures = 0
    while True:
        events = pool.poll()
        for spec, outcome in events.finished:
            _record(summary, spec, outcome)
        for busy_s in events.busy_s:
            ahead.job_finished(busy_s)
        for spec, exitcode in events.died:
            if spec is not None:
                outcome = await _worker_died(bucket, spec, exitcode)
                _record(summary, spec, outcome)
        finished_since_tick |= bool(events.finished or events.died)

        if stop.force.is_set():
            await keeper.stop()
            running = pool.stop(kill=True)
            for spec, outcome in pool.poll().finished:  # reported done before the kill
                _record(summary, spec, outcome)
            summary.released += await release_unstarted(bucket, running + pool.take_queued())
            summary.released += keeper.released
            summary.forced = True
            log.warning("stopped_now_jobs_released", released=summary.released)
            return summary
        if stop.graceful.is_set():
            if not stopping:
                stopping = True
                # No heartbeat may be in flight while the queue is emptied.
                await keeper.stop()
                summary.released += await release_unstarted(bucket, pool.take_queued())
                log.info("stopping_after_running_jobs", running=len(pool.busy()))
            if not pool.busy():
                pool.stop()
                summary.released += keeper.released
                _note_retries(summary, last)
                return summary
            await _wait(MAX_WAIT_S, wake, stop)
            continue

        now = time.monotonic()
        target = ahead.target(pool.ready_workers())
        room = pool.room(target)
        # The last tick left claimable work behind and won claims: fetch more once
        # the queue is half empty rather than after a whole interval.
        more_known = last is not None and last.deferred > 0 and bool(last.claimed)
        due = (
            now >= next_tick
            or (more_known and 2 * pool.queued() <= min(target, pool.queue_limit))
            or (once and finished_since_tick and pool.outstanding() == 0)
        )
        if room > 0 and due:
            t0 = time.monotonic()
            try:
                last = await run_tick(bucket, config, pool.submit, capacity=room)
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
            ahead.tick_took(time.monotonic() - t0)
            finished_since_tick = False
            summary.ticks += 1
            summary.claimed += len(last.claimed)
            if last.claimed or last.gave_up or last.repaired:
                log.info("tick", **last.summary(), queued=pool.queued())
            next_tick = now + interval
            continue  # look at the pool again before sleeping

        if (
            once
            and last is not None
            and pool.outstanding() == 0
            and not finished_since_tick
            and not last.claimed
            and last.deferred == 0
        ):
            settle = last.next_settle_s
            if settle is not None and settle <= max_settle + 1:
                log.info("waiting_for_files_to_settle", seconds=round(settle, 1))
                await _wait(settle + 0.2, None, stop)
                next_tick = 0.0
                continue
            retry = last.next_retry_s
            if wait_retries_s is not None and retry is not None and retry <= wait_retries_s:
                log.info("waiting_for_retry", seconds=round(retry, 1))
                await _wait(retry + 0.2, None, stop)
                next_tick = 0.0
                continue
            pool.stop()
            summary.released += keeper.released
            _note_retries(summary, last)
            return summary
        # Due but no room (workers busy or starting): only news from the pool helps.
        until_tick = MAX_WAIT_S if due else min(MAX_WAIT_S, max(0.0, next_tick - now))
        await _wait(until_tick, wake, stop)


async def _wait(seconds: float, wake: asyncio.Event | None, stop: StopSignal) -> None:
    """Sleep up to ``seconds``; news from the pool (``wake``) or the next signal ends it."""
    events = [stop.force if stop.graceful.is_set() else stop.graceful]
    if wake is not None:
        events.append(wake)
    if any(e.is_set() for e in events):
        if wake is not None:
            wake.clear()
        return
    tasks = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
    if wake is not None:
        wake.clear()
