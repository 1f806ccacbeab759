"""handlers/jobs/lease.py: heartbeats, the 0.8 x TTL self-fence, and a clean stop.

tests/test_regressions.py keeps the torture-test finding (a slow PUT hiding a
gap); these pin the lease's rules one by one.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from handlers.jobs.lease import PROGRESS_STEP, Lease, LeaseLost
from infra.storage.bucket import Bucket
from infra.storage.errors import TransientStorageError
from infra.storage.local import LocalFolderBucket

KEY = "_dropgpu/claims/count/a.bin@e1/attempt-1"
INFO = {"job_id": "count/a.bin@e1", "input_key": "inputs/count/a.bin", "attempt": 1}


class CountingPuts(LocalFolderBucket):
    """Counts PUTs of the claim; with ``hold`` set, the next PUT waits for that event."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0
        self.failing = False
        self.hold: asyncio.Event | None = None  # set: the next PUT waits for it
        self.in_flight = asyncio.Event()
        self.landed = 0

    async def put_bytes(self, key: str, body: bytes, **kw: Any) -> str:
        self.puts += 1
        if self.failing:
            raise TransientStorageError("503 Slow Down")
        if self.hold is not None:
            hold, self.hold = self.hold, None
            self.in_flight.set()
            await hold.wait()
        etag = await super().put_bytes(key, body, **kw)
        self.landed += 1
        return etag


def _bucket(tmp_path: Path) -> CountingPuts:
    (tmp_path / "bucket").mkdir(exist_ok=True)
    return CountingPuts(tmp_path / "bucket")


def test_heartbeats_rewrite_the_claim_with_progress(bucket: Bucket) -> None:
    async def scenario() -> None:
        try:
            lease = Lease(bucket, KEY, ttl=30, interval=0.05, info=INFO)
            async with lease:
                # Entering beats at once: the claim may have waited for a busy worker.
                first = json.loads(await bucket.get_bytes(KEY))
                assert first["phase"] == "starting" and first["progress"] == 0.0
                lease.set_phase("download")
                lease.update(0.42, "process")  # from the handler thread, in real jobs
                await asyncio.sleep(0.4)
                lease.check()  # beats keep it alive
            data = json.loads(await bucket.get_bytes(KEY))
            assert data["phase"] == "process" and data["progress"] == 0.42
            assert {k: data[k] for k in INFO} == INFO
            assert data["updated_at"] > first["updated_at"]
        finally:
            await bucket.close()

    asyncio.run(scenario())


def test_beats_stop_with_the_lease(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _bucket(tmp_path) as bucket:
            async with Lease(bucket, KEY, ttl=30, interval=0.02, info=INFO):
                await asyncio.sleep(0.2)
            assert bucket.puts >= 3  # the first beat plus a few on the interval
            stopped_at = bucket.puts
            await bucket.delete(KEY)  # what the commit does next
            await asyncio.sleep(0.1)
            assert bucket.puts == stopped_at
            assert (await bucket.list(KEY)).objects == []  # not resurrected

    asyncio.run(scenario())


def test_progress_is_clamped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _bucket(tmp_path) as bucket:
            lease = Lease(bucket, KEY, ttl=30, interval=9, info={})
            lease.update(7, "encode")
            await lease.beat()
            assert json.loads(await bucket.get_bytes(KEY))["progress"] == 1.0
            lease.update(-1, "encode")
            await lease.beat()
            assert json.loads(await bucket.get_bytes(KEY))["progress"] == 0.0

    asyncio.run(scenario())


def test_a_gap_longer_than_most_of_the_ttl_is_sticky(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _bucket(tmp_path) as bucket:
            lease = Lease(bucket, KEY, ttl=1.0, interval=9, info={})
            await lease.beat()
            await asyncio.sleep(0.05)
            await lease.beat()
            lease.check()  # 0.05 s apart: well inside 0.8 x 1 s
            await asyncio.sleep(0.9)
            await lease.beat()  # 0.9 s since the last good beat: > 0.8 s
            with pytest.raises(LeaseLost, match="apart"):
                lease.check()
            for _ in range(3):  # fresh beats cannot undo it: others may have taken over
                await lease.beat()
                with pytest.raises(LeaseLost):
                    lease.check()

    asyncio.run(scenario())


def test_failed_beats_do_not_keep_the_lease(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _bucket(tmp_path) as bucket:
            lease = Lease(bucket, KEY, ttl=0.5, interval=9, info={})
            await lease.beat()
            bucket.failing = True
            for _ in range(5):  # logged, never raised; the clock keeps running
                await lease.beat()
                await asyncio.sleep(0.1)
            with pytest.raises(LeaseLost, match="no successful heartbeat"):
                lease.check()

    asyncio.run(scenario())


def test_stop_lets_an_in_flight_put_land(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _bucket(tmp_path) as bucket:
            lease = Lease(bucket, KEY, ttl=30, interval=0.01, info=INFO)
            async with lease:
                release = asyncio.Event()
                bucket.hold = release  # the next beat's PUT hangs in flight
                await asyncio.wait_for(bucket.in_flight.wait(), 5)
                landed_before = bucket.landed
                stopping = asyncio.create_task(lease.stop())
                await asyncio.sleep(0.1)
                assert not stopping.done()  # waits for the PUT instead of cancelling it
                release.set()
                await asyncio.wait_for(stopping, 5)
                assert bucket.landed == landed_before + 1  # it landed before stop() returned
                puts = bucket.puts
            await asyncio.sleep(0.1)
            assert bucket.puts == puts  # and nothing after it

    asyncio.run(scenario())


def test_progress_writes_are_paced_however_often_the_handler_reports(tmp_path: Path) -> None:
    """A handler reporting in a tight loop (alternating phases) costs one write per interval."""

    async def scenario() -> None:
        async with _bucket(tmp_path) as bucket:
            lease = Lease(bucket, KEY, ttl=600, interval=150, info=INFO, progress_interval=0.2)
            reports = 0

            def handler() -> None:  # the handler thread
                nonlocal reports
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    reports += 1
                    lease.update((reports % 1000) / 1000, "even" if reports % 2 else "odd")

            t0 = time.monotonic()
            async with lease:
                await asyncio.to_thread(handler)
                duration = time.monotonic() - t0
                storm = bucket.puts
                # Changes under PROGRESS_STEP are not worth a request; no heartbeat is due.
                data = json.loads(await bucket.get_bytes(KEY))
                lease.update(data["progress"] + PROGRESS_STEP / 2, data["phase"])
                await asyncio.sleep(0.5)
                assert bucket.puts == storm
            print(f"{reports} reports in {duration:.2f} s -> {storm} claim writes")
            assert reports > 1000
            # The first beat, then at most one per progress_interval (+1 for rounding).
            assert 4 <= storm <= 1 + duration / 0.2 + 1
            assert lease.writes == bucket.puts

    asyncio.run(scenario())


def test_a_phase_change_is_written_before_the_next_heartbeat(bucket: Bucket) -> None:
    async def scenario() -> None:
        try:
            lease = Lease(bucket, KEY, ttl=600, interval=150, info=INFO, progress_interval=0.1)
            async with lease:
                lease.set_phase("download")
                for _ in range(100):
                    if json.loads(await bucket.get_bytes(KEY))["phase"] == "download":
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the phase never reached the claim")
                assert lease.writes == 2  # the first beat and the phase change, nothing more
        finally:
            await bucket.close()

    asyncio.run(scenario())
