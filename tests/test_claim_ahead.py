"""Claiming ahead (watcher/local/queued.py, watcher/local/pool.py): the mechanism, not its speed.

- the queue never holds more than its bound, and with trivial jobs it is used;
- a queued claim is kept alive by heartbeats, so no other watcher takes it,
  and one that waits a whole lease unstarted is released (no attempt used);
- the pool never starts a queued claim that may already look stale.

bench/bench_throughput.py measures what this buys.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from handlers.jobs.spec import JobSpec
from infra.storage.bucket import Bucket
from tests.conftest import BucketSpec
from tests.handlers_for_tests import executions
from tests.pipeline_helpers import counting_route, keys_under, make_config, put_bytes, read_manifest
from watcher.local.loop import StopSignal, watch
from watcher.local.pool import LocalWorkerPool, Queued, WorkerOptions, _Worker
from watcher.local.queued import ClaimAhead, QueueKeeper
from watcher.state import DecisionState, classify, take_snapshot
from watcher.tick import run_tick


class _Alive:
    exitcode = None
    pid = None
    sentinel = -1

    def is_alive(self) -> bool:
        return True


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, item: Any) -> None:
        self.sent.append(item)

    def poll(self) -> bool:
        return False


def _spec(i: int, *, ttl: float = 120) -> JobSpec:
    from tests.test_regressions import _spec_dict

    data = _spec_dict()
    data.update(rel=f"{i}.bin", etag=f"{i:032d}", lease_ttl_seconds=ttl, heartbeat_seconds=ttl / 4)
    return JobSpec.from_dict(data)


def _fake_pool(workers: int, queue_limit: int) -> tuple[LocalWorkerPool, list[_Pipe]]:
    opts = WorkerOptions(bucket="unused", endpoint_url=None, scratch_root="/tmp/unused")
    pool = LocalWorkerPool(workers, opts, queue_limit=queue_limit)
    pipes = [_Pipe() for _ in range(workers)]
    pool._workers = [
        _Worker(i, _Alive(), pipe, ready=True)  # type: ignore[arg-type]
        for i, pipe in enumerate(pipes)
    ]
    return pool, pipes


def test_room_is_idle_workers_plus_queue_room_never_past_the_bound() -> None:
    pool, pipes = _fake_pool(2, queue_limit=3)
    assert pool.room(0) == 2  # capacity-limited: one claim per idle worker
    assert pool.room(100) == 5  # the bound wins over any target
    for i in range(5):
        pool.submit(_spec(i))
    assert [len(p.sent) for p in pipes] == [1, 1] and pool.queued() == 3
    assert pool.room(100) == 0 and pool.outstanding() == 5


def test_no_claim_ahead_until_a_job_was_timed_nor_for_slow_jobs() -> None:
    ahead = ClaimAhead()
    assert ahead.target(2) == 0
    ahead.job_finished(30.0)  # a real encode
    ahead.tick_took(0.2)
    assert ahead.target(2) == 0
    fast = ClaimAhead()
    fast.job_finished(0.02)
    assert fast.target(2) >= 2 * 8  # the pool's bound then decides


def test_a_queued_claim_that_may_look_stale_is_never_started() -> None:
    pool, pipes = _fake_pool(1, queue_limit=2)
    busy = _spec(0, ttl=10)
    pool.submit(busy)
    waiting = _spec(1, ttl=10)
    pool.submit(waiting)
    assert pool.queued() == 1
    pool._queue[0].written_at = time.monotonic() - 9  # 90% of the lease since its last write
    pool._workers[0].job = None  # the worker frees
    pool._dispatch()
    assert pipes[0].sent == [busy.to_dict()]
    assert [q.spec for q in pool.take_expired(time.monotonic())] == [waiting]


async def _claim_body(bucket: Bucket, key: str) -> dict[str, Any]:
    return json.loads(await bucket.get_bytes(key))


def test_a_queued_claim_is_kept_alive_then_released_after_a_whole_lease(
    bucket: Bucket, tmp_path: Path
) -> None:
    ttl = 4.0
    config = make_config({"count": counting_route(tmp_path / "runs")}, lease_ttl_seconds=ttl)
    opts = WorkerOptions(bucket="unused", endpoint_url=None, scratch_root=str(tmp_path))
    pool = LocalWorkerPool(1, opts)  # never started: nothing takes the queue

    async def go() -> None:
        await put_bytes(bucket, "inputs/count/a.bin", b"a")
        report = await run_tick(bucket, config, pool.submit)
        assert len(report.claimed) == 1 and pool.queued() == 1
        spec = report.claimed[0]
        keeper = QueueKeeper(bucket, pool)
        keeper.start()
        try:
            await asyncio.sleep(ttl / 2 + 0.3)  # past two heartbeat intervals
            assert (await _claim_body(bucket, spec.claim_key))["phase"] == "queued"
            snapshot = await take_snapshot(bucket, config)
            obj = snapshot.inputs["count"][0]
            d = classify(snapshot, config.routes["count"], obj, lease_ttl_seconds=ttl)
            assert d.state == DecisionState.RUNNING
            other: list[JobSpec] = []  # another watcher, meanwhile
            assert (await run_tick(bucket, config, other.append)).claimed == []
            deadline = time.monotonic() + 30
            while pool.queued():
                assert time.monotonic() < deadline, "the queued claim was never released"
                await asyncio.sleep(0.1)
        finally:
            await keeper.stop()
        assert keeper.released == 1
        claims = await keys_under(bucket, "_dropgpu/claims/")
        assert any(k.endswith("attempt-1.released") for k in claims), claims
        again: list[JobSpec] = []
        await run_tick(bucket, config, again.append)
        assert [s.attempt for s in again] == [2]  # at once: the release used no attempt
        await bucket.close()

    asyncio.run(go())


@pytest.mark.slow
def test_trivial_jobs_are_claimed_ahead_within_the_bound_and_each_runs_once(
    target: BucketSpec, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    config = make_config(
        {"count": counting_route(counter)}, lease_ttl_seconds=30, interval_seconds=0.5
    )
    n, workers, limit = 16, 1, 2
    opts = WorkerOptions(
        bucket=target.spec, endpoint_url=target.endpoint_url, scratch_root=str(tmp_path / "s")
    )
    seen: Counter[str] = Counter()

    async def go() -> None:
        async with target.open() as bucket:
            for i in range(n):
                await put_bytes(bucket, f"inputs/count/{i:02d}.bin", f"job {i}".encode())
            pool = LocalWorkerPool(workers, opts, queue_limit=limit)
            submit = pool.submit

            def counting_submit(spec: JobSpec) -> None:
                submit(spec)
                seen["max_outstanding"] = max(seen["max_outstanding"], pool.outstanding())

            pool.submit = counting_submit  # type: ignore[method-assign]
            pool.start()
            try:
                summary = await watch(
                    bucket, config, pool, once=True, interval=0.5, stop=StopSignal()
                )
            finally:
                pool.stop(kill=True, timeout=1)
            assert summary.outcomes == Counter(succeeded=n)
            for i in range(n):
                m = await read_manifest(bucket, f"outputs/count/{i:02d}.bin/manifest.json")
                assert m["status"] == "succeeded" and m["attempts"] == 1

    asyncio.run(go())
    assert 1 < seen["max_outstanding"] <= workers + limit, seen
    assert executions(counter) == n
    assert all(executions(counter, f"job {i}".encode()) == 1 for i in range(n))


def test_queued_is_a_claim_with_its_write_times() -> None:
    q = Queued(_spec(0, ttl=10), queued_at=100.0, written_at=100.0)
    assert not q.may_look_stale(107.9) and q.may_look_stale(108.1)


def test_a_worker_whose_watcher_is_gone_stops_without_a_traceback() -> None:
    """A killed watcher closes the pipe; the worker's next message must not crash it."""
    import multiprocessing

    from watcher.local.pool import _tell_watcher

    parent_end, worker_end = multiprocessing.Pipe()
    assert _tell_watcher(worker_end, ("ready", None, None))
    assert parent_end.recv() == ("ready", None, None)
    parent_end.close()
    assert _tell_watcher(worker_end, ("done", "job", None)) is False
