"""The claim lease: the owner rewrites its attempt object as a heartbeat.

The write itself is the claim protocol's (handlers/jobs/claims.py); this module
decides when to beat and whether the lease still holds.

Other watchers judge a claim stale from its LastModified (one LIST, no GET).
The owner also fences itself: if it has not managed to heartbeat for most of
the TTL, others may already consider it dead, so it must not upload or commit.
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

log: FilteringBoundLogger = structlog.get_logger(__name__)


class LeaseLost(DropgpuError):
    """Heartbeats failed for too long: another watcher may have taken the job over."""


class Lease:
    def __init__(
        self, bucket: Bucket, claim_key: str, *, ttl: float, interval: float, info: dict[str, Any]
    ) -> None:
        self._bucket = bucket
        self._key = claim_key
        self._ttl = ttl
        self._interval = interval
        self._info = info
        self._phase = "starting"
        self._progress = 0.0
        # The claim was created just before the job was handed to us. _last_ok is
        # when the last successful heartbeat was *sent*: its PUT landed after that.
        self._last_ok = time.monotonic()
        # Sticky: once a gap between heartbeats may have let the claim look stale to
        # others, another watcher may be running this job; a later beat cannot undo it.
        self._gap: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def update(self, fraction: float, phase: str) -> None:
        """Called from the handler thread; the next heartbeat carries it."""
        self._progress = max(0.0, min(1.0, float(fraction)))
        self._phase = phase

    def set_phase(self, phase: str) -> None:
        self._phase = phase

    def check(self) -> None:
        """Raise LeaseLost when the lease may have expired in others' eyes."""
        # Margin: others see LastModified from when the PUT landed, and clocks differ.
        if self._gap is not None:
            raise LeaseLost(f"heartbeats were {self._gap:.1f} s apart; the claim may have expired")
        if time.monotonic() - self._last_ok > self._ttl * 0.8:
            raise LeaseLost(f"no successful heartbeat for {time.monotonic() - self._last_ok:.0f} s")

    async def beat(self) -> None:
        progress = round(self._progress, 4)
        sent = time.monotonic()
        try:
            await write_heartbeat(
                self._bucket, self._key, phase=self._phase, progress=progress, **self._info
            )
        except BucketError as exc:
            log.warning("heartbeat_failed", claim=self._key, error=str(exc))
            return
        # The previous beat landed no earlier than it was sent, this one no later
        # than now: the claim may have looked that old to other watchers.
        gap = time.monotonic() - self._last_ok
        if gap > self._ttl * 0.8 and self._gap is None:
            self._gap = gap
            log.warning("heartbeat_gap_exceeds_lease", claim=self._key, gap_s=gap)
        self._last_ok = sent

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            if self._stopping.is_set():
                return
            await self.beat()

    async def stop(self) -> None:
        """Stop heartbeating, letting a PUT in flight land first.

        Cancelling a request mid-flight could let it reach the store after the
        commit deleted the claim, resurrecting it; so we wait instead.
        """
        self._stopping.set()
        if self._task:
            await self._task
            self._task = None

    async def __aenter__(self) -> Lease:
        # Beat at once: the claim may have waited for a busy or starting worker.
        await self.beat()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
