"""Leases vs Modal's queue, in-process against SeaweedFS (no token, no network).

A spawned call may wait for a GPU far longer than the lease. These tests run the
deployed tick (``run_watcher_tick`` / ``locked_watcher_tick``, what ``watch_tick`` calls)
with a 2 s lease so a "queued" call outlives it within a test, and the worker class
through ``run_job.local``. The canceller is injected: ``modal.FunctionCall`` needs
Modal's servers, so the test records which call ids the tick asks to cancel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from handlers.contract.keys import JobRef, parse_claim_key
from handlers.jobs.claims import spawned_call_key, write_heartbeat
from tests.conftest import BucketSpec
from tests.handlers_for_tests import executions
from tests.test_modal_app import _put, import_app, write_config

LEASE = 2.0  # seconds; the deployment's real default is 600


@pytest.fixture
def modal_env(s3_target: BucketSpec, monkeypatch: pytest.MonkeyPatch) -> BucketSpec:
    monkeypatch.setenv("DROPGPU_BUCKET", s3_target.spec)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_target.endpoint_url or "")
    return s3_target


class Modalish:
    """The app with a short lease and a given start deadline, spawns and cancels recorded."""

    def __init__(self, m: ModuleType, spec: BucketSpec, start_deadline: float) -> None:
        self.m = m
        self.spec = spec
        watch = m.RUN_CONFIG.watch.model_copy(update={"lease_ttl_seconds": LEASE})
        self.config = m.RUN_CONFIG.model_copy(update={"watch": watch})
        self.settings = dataclasses.replace(m.SETTINGS, start_deadline_seconds=start_deadline)
        m.SETTINGS = self.settings  # what the worker's pre-run check reads
        self.spawned: list[tuple[str, dict[str, Any]]] = []
        self.cancelled: list[str] = []

    def spawn(self, cls: str, spec: dict[str, Any]) -> str:
        self.spawned.append((cls, spec))
        return f"fc-{len(self.spawned)}"

    async def _tick(self, *, locked: bool) -> dict[str, Any]:
        fn = self.m.locked_watcher_tick if locked else self.m.run_watcher_tick
        async with self.spec.open() as bucket:
            return await fn(bucket, self.config, self.settings, self.spawn, self.cancelled.append)

    def tick(self) -> dict[str, Any]:
        return asyncio.run(self._tick(locked=True))

    def run(self, index: int) -> dict[str, Any]:
        cls, job = self.spawned[index]
        return getattr(self.m, cls)().run_job.local(job)

    async def claim_names(self, prefix: str = "_dropgpu/claims/") -> list[str]:
        async with self.spec.open() as bucket:
            return sorted(o.key.rsplit("/", 1)[1] for o in (await bucket.list(prefix)).objects)


def test_a_spawn_queued_past_the_lease_is_not_retried_and_still_runs(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = Modalish(import_app(monkeypatch, write_config(tmp_path)), modal_env, 3_600)
    asyncio.run(_put(modal_env, {"inputs/count/a.bin": b"queued"}))
    assert app.tick()["spawned"] == 1

    time.sleep(LEASE + 1.5)  # the call "waits for a GPU" past the lease
    for _ in range(2):
        summary = app.tick()
        assert summary["spawned"] == 0, summary  # dispatched: not a dead worker
    # No attempt burnt: only attempt 1 and its recorded call id.
    assert asyncio.run(app.claim_names()) == ["attempt-1", "attempt-1.call"]

    result = app.run(0)  # the GPU frees up: the late worker may still run its claim
    assert result["status"] == "succeeded", result
    assert executions(tmp_path / "counter") == 1


def test_past_the_start_deadline_the_job_is_reclaimed_old_call_cancelled_late_worker_refuses(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = Modalish(import_app(monkeypatch, write_config(tmp_path)), modal_env, LEASE + 1)
    asyncio.run(_put(modal_env, {"inputs/count/a.bin": b"stuck"}))
    app.tick()
    time.sleep(LEASE + 2.5)  # past the start deadline, never started

    summary = app.tick()
    assert summary["spawned"] == 1 and summary["cancelled"] == 1
    assert app.cancelled == ["fc-1"]  # the superseded queued call, by its recorded id
    assert app.spawned[1][1]["attempt"] == 2

    late = app.run(0)  # attempt 1's container starts after all: it must not run
    assert late["status"] == "refused" and "superseded" in late["message"]
    assert executions(tmp_path / "counter") == 0

    assert app.run(1)["status"] == "succeeded"
    assert executions(tmp_path / "counter") == 1


def test_a_stale_claim_not_yet_superseded_is_refused(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = Modalish(import_app(monkeypatch, write_config(tmp_path)), modal_env, LEASE + 1)
    asyncio.run(_put(modal_env, {"inputs/count/a.bin": b"stale"}))
    app.tick()
    time.sleep(LEASE + 2.5)
    late = app.run(0)  # no tick ran since: the claim is the newest, but dead
    assert late["status"] == "refused" and "stale" in late["message"]
    assert executions(tmp_path / "counter") == 0


def test_a_started_worker_that_stopped_heartbeating_is_retried_at_the_lease(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The start deadline covers only claims no worker ever heartbeated.
    app = Modalish(import_app(monkeypatch, write_config(tmp_path)), modal_env, 3_600)
    asyncio.run(_put(modal_env, {"inputs/count/a.bin": b"crash"}))
    app.tick()
    job = app.spawned[0][1]

    async def beat_once() -> None:
        async with modal_env.open() as bucket:
            ref = JobRef(job["route"], job["rel"], job["etag"])
            await write_heartbeat(bucket, ref.claim_key(1), phase="starting", progress=0.0)

    asyncio.run(beat_once())  # the worker started, then its container died
    time.sleep(LEASE + 1.5)
    summary = app.tick()
    assert summary["spawned"] == 1 and app.spawned[1][1]["attempt"] == 2


def test_overlapping_ticks_never_hold_more_live_claims_than_max_containers(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = Modalish(import_app(monkeypatch, write_config(tmp_path)), modal_env, 3_600)
    asyncio.run(_put(modal_env, {f"inputs/count/{i}.bin": f"j{i}".encode() for i in range(5)}))

    async def overlapping() -> list[dict[str, Any]]:
        return await asyncio.gather(*(app._tick(locked=True) for _ in range(4)))

    summaries = asyncio.run(overlapping())
    claims = [
        n for n in asyncio.run(app.claim_names()) if parse_claim_key(f"_dropgpu/claims/j/{n}")
    ]
    assert len(claims) <= 2, (claims, summaries)  # count: max_containers = 2
    assert len(app.spawned) == len(claims) >= 1
    assert sum(1 for s in summaries if s.get("skipped")) >= 1

    # The lock was handed back: a later tick is not locked out and stays within the cap.
    app.tick()
    later = [n for n in asyncio.run(app.claim_names()) if "." not in n]
    assert len(later) <= 2


def test_the_spawned_call_id_is_recorded_beside_the_claim(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = Modalish(import_app(monkeypatch, write_config(tmp_path)), modal_env, 3_600)
    asyncio.run(_put(modal_env, {"inputs/count/a.bin": b"id"}))
    app.tick()
    job = app.spawned[0][1]
    ref = JobRef(job["route"], job["rel"], job["etag"])

    async def read() -> bytes:
        async with modal_env.open() as bucket:
            return await bucket.get_bytes(spawned_call_key(ref, 1))

    assert b'"call_id": "fc-1"' in asyncio.run(read())


def test_a_killed_ticks_lock_expires_and_a_released_one_is_free_at_once(
    modal_env: BucketSpec,
) -> None:
    from infra.deploy.tick_lock import acquire_tick_lock

    async def scenario() -> None:
        async with modal_env.open() as bucket:
            first = await acquire_tick_lock(bucket, hold_seconds=1.5)
            assert first is not None
            assert await acquire_tick_lock(bucket, hold_seconds=1.5) is None  # held
            await asyncio.sleep(2.5)  # the holder was killed: never released
            # Every tick of a deployment holds for the same time (its watcher timeout).
            second = await acquire_tick_lock(bucket, hold_seconds=1.5)
            assert second is not None and second.generation == first.generation + 1
            await second.release()
            third = await acquire_tick_lock(bucket, hold_seconds=1.5)
            assert third is not None  # released: no wait
            keys = [o.key for o in (await bucket.list("_dropgpu/locks/")).objects]
            assert keys == [third.key]  # older generations cleaned up

    asyncio.run(scenario())
