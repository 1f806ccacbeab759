"""Live progress in the claim body (issue 20 point 5), through real jobs on both backends.

The heartbeat is every TTL/4 (30 s by default); a job shorter than that must still
show its real phase and progress, and the claim writes per job must stay bounded
however often the handler reports. tests/test_lease.py pins the lease's pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from gpu.device import DeviceInfo
from handlers.jobs.lease import PROGRESS_MIN_INTERVAL_S
from handlers.jobs.runner import JobRunner
from handlers.jobs.spec import JobSpec
from infra.storage.bucket import Bucket, Listing, ObjectInfo
from infra.storage.errors import ObjectNotFound
from tests.conftest import BucketSpec
from tests.pipeline_helpers import counting_route, make_config, put_bytes, run
from watcher.tick import run_tick

SLEEP_S = 5.0  # the handler's run, reporting progress every 50 ms (100 reports)
PHASES = 4  # starting, download, process ("sleeping"), upload


class CountsClaimWrites(Bucket):
    """Real storage underneath; counts the writes of one key (the claim)."""

    def __init__(self, inner: Bucket) -> None:
        self.inner = inner
        self.url, self.stats = inner.url, inner.stats
        self.watched: str | None = None
        self.writes = 0

    async def put_bytes(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> str:
        if key == self.watched:
            self.writes += 1
        return await self.inner.put_bytes(key, body, content_type=content_type)

    async def list(self, prefix: str, *, start_after: str | None = None) -> Listing:
        return await self.inner.list(prefix, start_after=start_after)

    async def get_to_file(self, key: str, dest: Path, *, if_match: str | None = None) -> ObjectInfo:
        return await self.inner.get_to_file(key, dest, if_match=if_match)

    async def get_bytes(self, key: str) -> bytes:
        return await self.inner.get_bytes(key)

    async def put_file(self, key: str, src: Path, *, content_type: str) -> str:
        return await self.inner.put_file(key, src, content_type=content_type)

    async def create_if_absent(
        self, key: str, body: bytes, *, content_type: str = "application/json"
    ) -> bool:
        return await self.inner.create_if_absent(key, body, content_type=content_type)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)


def test_a_job_shorter_than_the_heartbeat_shows_its_progress(
    target: BucketSpec, tmp_path: Path
) -> None:
    # Default lease: TTL 120 s, heartbeat every 30 s, far longer than this job.
    config = make_config(
        {"count": counting_route(tmp_path / "runs", params={"sleep_s": SLEEP_S})},
        lease_ttl_seconds=120,
    )
    seen: list[dict[str, Any]] = []

    async def scenario() -> None:
        async with target.open() as real:
            bucket = CountsClaimWrites(real)
            await put_bytes(real, "inputs/count/a.bin", b"slow one")
            claimed: list[JobSpec] = []
            await run_tick(real, config, claimed.append)
            (spec,) = claimed
            assert spec.heartbeat_seconds == 30
            bucket.watched = spec.claim_key
            runner = JobRunner(bucket, scratch_root=tmp_path / "s", device=DeviceInfo("cpu"))
            t0 = time.monotonic()
            job = asyncio.create_task(runner.run(spec))
            while not job.done():  # what `dropgpu status --progress` reads
                with contextlib.suppress(ObjectNotFound):  # gone once committed
                    seen.append(json.loads(await real.get_bytes(spec.claim_key)))
                await asyncio.sleep(0.1)
            outcome = await job
            duration = time.monotonic() - t0
            assert outcome.status == "succeeded"
            heartbeats = 1 + duration // spec.heartbeat_seconds
            bound = duration / PROGRESS_MIN_INTERVAL_S + PHASES + heartbeats
            print(f"claim writes: {bucket.writes} in {duration:.1f} s (bound {bound:.1f})")
            assert 2 <= bucket.writes <= bound

    run(scenario())
    running = [s for s in seen if s["phase"] == "sleeping"]
    assert running, sorted({s["phase"] for s in seen})
    assert max(s["progress"] for s in running) >= 0.3  # real progress, mid-run
    assert [s["progress"] for s in running] == sorted(s["progress"] for s in running)
