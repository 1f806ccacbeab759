"""One watcher tick at a time per bucket, from create-if-absent writes alone.

Modal's ``max_containers=1`` serialises the scheduled function of one app, but a
"tick now", a second deployment or a local watcher on the same bucket can still
overlap it, and two ticks that counted the same free slots claim twice
``max_containers``. So a tick first wins a generation of the lock:

``_dropgpu/locks/tick/<n>``: held by the tick that created it, until it writes
``<n>.released`` or ``<n>`` is older than the holder's timeout (a tick killed mid-way).
Taking generation n+1 is one create-if-absent, so of two ticks that both see n free
exactly one wins. Older generations are deleted by the winner.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.contract.keys import INTERNAL
from handlers.contract.manifest import iso, utc_now
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError

log: FilteringBoundLogger = structlog.get_logger(__name__)

LOCK_PREFIX = f"{INTERNAL}locks/tick/"
_NAME = re.compile(r"^(\d{1,12})(\.released)?$")


@dataclass(frozen=True, slots=True)
class TickLock:
    """A held generation; ``release`` hands it on."""

    bucket: Bucket
    generation: int

    @property
    def key(self) -> str:
        return f"{LOCK_PREFIX}{self.generation:012d}"

    async def release(self) -> None:
        try:
            await self.bucket.create_if_absent(f"{self.key}.released", b"{}")
        except BucketError as exc:  # expires with its timeout instead
            log.warning("tick_lock_release_failed", error=str(exc))


async def acquire_tick_lock(bucket: Bucket, *, hold_seconds: float) -> TickLock | None:
    """The lock for this tick; None when another live tick holds it.

    ``hold_seconds`` is the caller's, applied to the holder's age: every tick of one
    deployment uses the same (its watcher timeout + 30 s).
    """
    listing = await bucket.list(LOCK_PREFIX)
    generations: dict[int, list[str]] = {}
    released: set[int] = set()
    newest_age: float | None = None
    for obj in listing.objects:
        m = _NAME.fullmatch(obj.key[len(LOCK_PREFIX) :])
        if not m:
            continue
        n = int(m.group(1))
        generations.setdefault(n, []).append(obj.key)
        if m.group(2):
            released.add(n)
    newest = max(generations, default=0)
    if newest and newest not in released:
        for obj in listing.objects:
            if obj.key == f"{LOCK_PREFIX}{newest:012d}":
                newest_age = (listing.server_time - obj.last_modified).total_seconds()
        if newest_age is not None and newest_age <= hold_seconds:
            return None
    lock = TickLock(bucket, newest + 1)
    body = json.dumps({"taken_at": iso(utc_now()), "hold_seconds": hold_seconds}).encode()
    if not await bucket.create_if_absent(lock.key, body):
        return None  # another tick took this generation first
    for keys in generations.values():
        for key in keys:
            with contextlib.suppress(BucketError):  # else deleted by the next winner
                await bucket.delete(key)
    return lock
