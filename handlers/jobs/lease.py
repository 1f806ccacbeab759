"""The claim lease: the owner rewrites its attempt object as a heartbeat.

The write itself is the claim protocol's (handlers/jobs/claims.py); this module
decides when to beat and whether the lease still holds.

Other watchers judge a claim stale from its LastModified (one LIST, no GET).
The owner also fences itself: if it has not managed to heartbeat for most of
the TTL, others may already consider it dead, so it must not upload or commit.

The claim body carries the job's phase and progress (``dropgpu status``, the
dashboard). A heartbeat every ``interval`` (TTL/4, 30 s by default) would leave
every job shorter than that at "starting 0%", so a change of phase, or of
progress by at least ``PROGRESS_STEP``, is written too, but never sooner than
``progress_interval`` after the previous write. Any write is also a heartbeat,
so the next beat counts from it. Writes per job are therefore at most
``1 + duration / min(progress_interval, interval)``, whatever the handler reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.jobs.claims import write_heartbeat
from infra.errors import DropgpuError
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError
from infra.text import one_line

log: FilteringBoundLogger = structlog.get_logger(__name__)

# At most one progress write per this many seconds: status stays live, requests bounded.
PROGRESS_MIN_INTERVAL_S = 2.0
# A progress change smaller than this is not worth a request on its own.
PROGRESS_STEP = 0.01


class LeaseLost(DropgpuError):
    """Heartbeats failed for too long: another watcher may have taken the job over."""


class Lease:
    def __init__(
        self,
        bucket: Bucket,
        claim_key: str,
        *,
        ttl: float,
        interval: float,
        info: dict[str, Any],
        progress_interval: float = PROGRESS_MIN_INTERVAL_S,
    ) -> None:
        self._bucket = bucket
        self._key = claim_key
        self._ttl = ttl
        self._interval = interval
        self._progress_interval = progress_interval
        self._info = info
        self._phase = "starting"
        self._progress = 0.0
        # The claim was created just before the job was handed to us. _last_ok is
        # when the last successful heartbeat was *sent*: its PUT landed after that.
        self._last_ok = time.monotonic()
        self._last_sent = self._last_ok  # the last write tried, ok or not: paces the next
        self._written: tuple[str, float] | None = None  # (phase, progress) the claim holds
        self.writes = 0  # claim writes tried by this lease (the request count per job)
        # Wakes the beat task when phase or progress changed; set from any thread.
        self._wake = asyncio.Event()
        self._poked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Sticky: once a gap between heartbeats may have let the claim look stale to
        # others, another watcher may be running this job; a later beat cannot undo it.
        self._gap: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def update(self, fraction: float, phase: str) -> None:
        """Called from the handler thread; written soon (rate-limited) when it changed enough."""
        self._progress = max(0.0, min(1.0, float(fraction)))
        self._phase = phase
        self._poke()

    def set_phase(self, phase: str) -> None:
        self._phase = phase
        self._poke()

    def _changed(self) -> bool:
        """Does the claim body lag behind enough to be worth a write?"""
        if self._written is None:
            return True
        phase, progress = self._written
        return phase != self._phase or abs(progress - self._progress) >= PROGRESS_STEP

    def _poke(self) -> None:
        # Once per wake-up, not per call: a handler may report progress in a tight loop.
        loop = self._loop
        if loop is None or self._poked or not self._changed():
            return
        self._poked = True
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to wake
            loop.call_soon_threadsafe(self._wake.set)

    def _next_write_at(self) -> float:
        beat_at = self._last_sent + self._interval
        if self._changed():
            return min(beat_at, self._last_sent + self._progress_interval)
        return beat_at

    def check(self) -> None:
        """Raise LeaseLost when the lease may have expired in others' eyes."""
        # Margin: others see LastModified from when the PUT landed, and clocks differ.
        if self._gap is not None:
            raise LeaseLost(f"heartbeats were {self._gap:.1f} s apart; the claim may have expired")
        if time.monotonic() - self._last_ok > self._ttl * 0.8:
            raise LeaseLost(f"no successful heartbeat for {time.monotonic() - self._last_ok:.0f} s")

    async def beat(self) -> None:
        phase, progress = self._phase, round(self._progress, 4)
        sent = time.monotonic()
        self._last_sent = sent
        self.writes += 1
        try:
            await write_heartbeat(
                self._bucket, self._key, phase=phase, progress=progress, **self._info
            )
        except BucketError as exc:
            log.warning("heartbeat_failed", claim=self._key, error=one_line(exc))
            return
        self._written = (phase, progress)
        # The previous beat landed no earlier than it was sent, this one no later
        # than now: the claim may have looked that old to other watchers.
        gap = time.monotonic() - self._last_ok
        if gap > self._ttl * 0.8 and self._gap is None:
            self._gap = gap
            log.warning("heartbeat_gap_exceeds_lease", claim=self._key, gap_s=gap)
        self._last_ok = sent

    async def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before looking at the state: a change from now on wakes us again.
            self._poked = False
            self._wake.clear()
            wait = self._next_write_at() - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue  # woken (a change, or stop) or due: look again
            await self.beat()

    async def stop(self) -> None:
        """Stop heartbeating, letting a PUT in flight land first.

        Cancelling a request mid-flight could let it reach the store after the
        commit deleted the claim, resurrecting it; so we wait instead.
        """
        self._stopping.set()
        self._wake.set()
        if self._task:
            await self._task
            self._task = None

    async def __aenter__(self) -> Lease:
        self._loop = asyncio.get_running_loop()
        # Beat at once: the claim may have waited for a busy or starting worker.
        await self.beat()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
