"""Regression tests for defects the reliability harness found in core code."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gpu.device import DeviceInfo
from handlers.contract.keys import CLAIMS, DONE, JobRef
from handlers.jobs.lease import Lease, LeaseLost
from handlers.jobs.runner import JobRunner
from handlers.jobs.spec import JobSpec
from infra.s3_server import SeaweedS3Server
from infra.storage.bucket import Bucket, Listing, ObjectInfo
from infra.storage.local import LocalFolderBucket
from infra.storage.s3 import S3Bucket
from tests.fault_proxy import FaultProxy, FaultRates
from tests.handlers_for_tests import executions
from tests.pipeline_helpers import counting_route, make_config, put_bytes
from watcher.local.pool import LocalWorkerPool, WorkerOptions, _Worker
from watcher.tick import make_job_spec, run_tick


@pytest.fixture
def proxy(s3_server: SeaweedS3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url, seed=11) as p:
        yield p


def test_create_if_absent_wins_when_its_response_was_lost_and_aiohttp_resent_it(
    proxy: FaultProxy, s3_server: SeaweedS3Server, s3_bucket_name: str
) -> None:
    """Found by the fault proxy: the store applied a create, the reused connection was
    reset before the answer, aiohttp silently re-sent the (idempotent) PUT and got 412.
    botocore reported RetryAttempts=0, so create_if_absent said "lost" although the
    object was ours: claims, done markers and failure records were orphaned (a wasted
    attempt, a commit left to the repair path)."""

    async def go() -> None:
        async with S3Bucket(s3_bucket_name, endpoint_url=proxy.endpoint_url) as b:
            await b.put_bytes("warm", b"keep-alive connection in the pool")
            for i in range(3):
                proxy.set_rates(
                    FaultRates(
                        reset=1.0,
                        reset_after_upstream_fraction=1.0,
                        methods=frozenset({"PUT"}),
                        max_faults=proxy.injected()["reset"] + 1,
                    )
                )
                key = f"_dropgpu/done/job-{i}"
                assert await b.create_if_absent(key, f'{{"owner": "me", "n": {i}}}'.encode())
                proxy.disable()
                # Someone else's create of the same key still loses.
                assert not await b.create_if_absent(key, b'{"owner": "other"}')
        assert proxy.injected()["reset_after_upstream"] == 3

    asyncio.run(go())


class _CommitBetweenListings:
    """A bucket whose done/claims listings are serialised in call order, with a job's
    commit (done marker created, then its claims deleted) landing between the two."""

    def __init__(self, inner: Bucket, done_key: str, claims_prefix: str) -> None:
        self._inner = inner
        self._done_key = done_key
        self._claims_prefix = claims_prefix
        self._lock = asyncio.Lock()
        self._listed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list(self, prefix: str, **kw: Any) -> Listing:
        if prefix not in (DONE, CLAIMS):
            return await self._inner.list(prefix, **kw)
        async with self._lock:
            if self._listed == 1:  # the commit lands after the first of the two reads
                await self._inner.create_if_absent(self._done_key, b'{"status": "succeeded"}')
                for o in (await self._inner.list(self._claims_prefix)).objects:
                    await self._inner.delete(o.key)
            self._listed += 1
            return await self._inner.list(prefix, **kw)


def test_a_commit_between_the_done_and_claims_listings_is_not_new_work(tmp_path: Path) -> None:
    """Found by the torture test: done and claims were listed concurrently, so a commit
    landing between the two reads made a finished job look new (no marker, no claim);
    another watcher claimed attempt 1 again and ran the handler a second time."""
    root = tmp_path / "bucket"
    (root / "inputs").mkdir(parents=True)
    config = make_config(
        {"count": {**counting_route(tmp_path / "runs"), "max_attempts": 3}}, lease_ttl_seconds=60
    )

    async def go() -> None:
        async with LocalFolderBucket(root) as bucket:
            await put_bytes(bucket, "inputs/count/a.bin", b"a")
            claimed: list[JobSpec] = []
            await run_tick(bucket, config, claimed.append)  # attempt 1 is running
            assert len(claimed) == 1
            ref = claimed[0].ref
            racy = _CommitBetweenListings(bucket, ref.done_key, ref.claims_prefix)
            again: list[JobSpec] = []
            report = await run_tick(racy, config, again.append)  # type: ignore[arg-type]
            assert again == [], "a committed job was claimed again"
            assert report.states["claimable"] == 0

    asyncio.run(go())


def test_lease_with_a_heartbeat_gap_stays_lost(tmp_path: Path) -> None:
    """Found by the torture test: a heartbeat that landed late (slow store, busy CPU)
    reset the lease clock when it *returned*, and a later successful beat hid a gap in
    which other watchers saw the claim stale and started the job again."""
    root = tmp_path / "bucket"
    (root / "inputs").mkdir(parents=True)

    class SlowOnce(LocalFolderBucket):
        slow = True

        async def put_bytes(self, key: str, body: bytes, **kw: Any) -> str:
            if self.slow:
                self.slow = False
                await asyncio.sleep(1.0)  # the PUT lands at once, its answer comes late
            return await super().put_bytes(key, body, **kw)

    async def go() -> None:
        async with SlowOnce(root) as bucket:
            lease = Lease(bucket, "_dropgpu/claims/j/attempt-1", ttl=2.0, interval=9, info={})
            await lease.beat()  # the slow one: started at t0, returned 1 s later
            lease.check()  # right after: the clock counts from when it was sent...
            await asyncio.sleep(0.7)
            await lease.beat()  # ... so this beat reveals a 1.7 s gap (> 0.8 TTL)
            with pytest.raises(LeaseLost):
                lease.check()
            await lease.beat()
            with pytest.raises(LeaseLost):  # sticky: a fresh beat does not undo it
                lease.check()

    asyncio.run(go())


def test_submit_after_a_free_worker_died_during_the_tick_does_not_crash(tmp_path: Path) -> None:
    """Found by the torture test: a worker counted free when the tick began was killed
    before the tick handed it a claim; submit() raised and the whole watcher exited.
    The claim now stays queued for the worker that replaces it."""
    opts = WorkerOptions(bucket=str(tmp_path / "b"), endpoint_url=None, scratch_root=str(tmp_path))
    pool = LocalWorkerPool(1, opts)
    worker = _Worker(0, _DeadProcess(), _BrokenPipe(), ready=True)  # type: ignore[arg-type]
    pool._workers = [worker]
    spec = JobSpec.from_dict(_spec_dict())
    pool.submit(spec)  # must not raise
    assert worker.job is None and worker.gone and pool.queued() == 1


class _DeadProcess:
    exitcode = -9
    index = 0

    def is_alive(self) -> bool:
        return False


class _BrokenPipe:
    def send(self, item: Any) -> None:
        raise BrokenPipeError("the worker is gone")

    def poll(self) -> bool:
        return False


def _spec_dict() -> dict[str, Any]:
    config = make_config({"count": counting_route(Path("/tmp/none"))})
    route = config.routes["count"]
    ref = JobRef("count", "a.bin", "e" * 32)
    obj = ObjectInfo("inputs/count/a.bin", "e" * 32, 1, datetime.now(UTC))
    return make_job_spec(config, route, ref, obj, 1, "2026-01-01T00:00:00Z").to_dict()


def test_a_late_claim_of_a_committed_job_does_not_run_the_handler(tmp_path: Path) -> None:
    """Found by the torture test: a tick whose snapshot predates a commit created
    attempt-1 again after that commit had deleted the claims (create-if-absent then
    succeeds), and its worker ran the handler a second time before the fence stopped it."""
    root = tmp_path / "bucket"
    (root / "inputs").mkdir(parents=True)
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)}, lease_ttl_seconds=60)

    async def go() -> None:
        async with LocalFolderBucket(root) as bucket:
            await put_bytes(bucket, "inputs/count/a.bin", b"a")
            claimed: list[JobSpec] = []
            await run_tick(bucket, config, claimed.append)
            spec = claimed[0]
            # Another attempt commits: done marker first, then its claims go.
            await bucket.create_if_absent(spec.ref.done_key, b'{"status": "succeeded"}')
            await bucket.delete(spec.claim_key)
            # The stale tick's create of attempt-1 now succeeds ...
            assert await bucket.create_if_absent(spec.claim_key, b'{"owner": "late tick"}')
            runner = JobRunner(
                bucket, scratch_root=tmp_path / "s", device=DeviceInfo("cpu"), worker_name="t"
            )
            outcome = await runner.run(spec)  # ... but its worker must not run the handler
            assert outcome.status == "superseded" and not outcome.handler_ran
            assert (await bucket.list(spec.ref.claims_prefix)).objects == []

    asyncio.run(go())
    assert executions(counter) == 0
