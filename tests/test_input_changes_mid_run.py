"""An input replaced or deleted while its job runs (issue 11 point 2, issue 20 point 4).

Real runners on both backends: the slow attempt runs in a task while the test,
as a user would, replaces or deletes the input and lets other jobs commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from pathlib import Path

from gpu.device import DeviceInfo
from handlers.contract.keys import FEED, JobRef
from handlers.jobs.claims import create_claim
from handlers.jobs.outcome import JobOutcome
from handlers.jobs.runner import JobRunner
from handlers.jobs.spec import JobSpec
from infra.storage.bucket import Bucket
from infra.storage.local import LocalFolderBucket
from tests.conftest import BucketSpec
from tests.handlers_for_tests import executions
from tests.pipeline_helpers import (
    counting_route,
    keys_under,
    make_config,
    put_bytes,
    read_manifest,
    run,
    tick_and_run,
)
from watcher.tick import run_tick

KEY = "inputs/count/a.bin"
MANIFEST = "outputs/count/a.bin/manifest.json"
V1, V2 = b"version one: slow", b"version two!"


def _runner(bucket: Bucket, scratch: Path) -> JobRunner:
    return JobRunner(bucket, scratch_root=scratch, device=DeviceInfo("cpu"), worker_name="test")


async def _claim_one(bucket: Bucket, config: object, **params: object) -> JobSpec:
    claimed: list[JobSpec] = []
    await run_tick(bucket, config, claimed.append)  # type: ignore[arg-type]
    assert len(claimed) == 1, claimed
    spec = claimed[0]
    return dataclasses.replace(spec, params={**spec.params, **params})


async def _start_slow(
    bucket: Bucket, spec: JobSpec, scratch: Path, counter: Path
) -> asyncio.Task[JobOutcome]:
    """Run ``spec`` in a task; return once its handler runs (its input is downloaded)."""
    before = executions(counter)
    task = asyncio.create_task(_runner(bucket, scratch).run(spec))
    for _ in range(200):
        if executions(counter) > before:
            return task
        await asyncio.sleep(0.02)
    raise AssertionError("the slow job's handler never started")


async def _user_deletes(target: BucketSpec, bucket: Bucket, key: str) -> None:
    """What `rm` or `aws s3 rm` does: dropgpu's folder bucket refuses to delete inputs."""
    if isinstance(bucket, LocalFolderBucket):
        (Path(target.spec) / key).unlink()
    else:
        await bucket.delete(key)


def test_a_replaced_input_never_gets_the_old_versions_bytes(
    target: BucketSpec, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})

    async def scenario() -> None:
        async with target.open() as bucket:
            v1_etag = await put_bytes(bucket, KEY, V1)
            v1 = await _claim_one(bucket, config, sleep_s=2.0)
            slow = await _start_slow(bucket, v1, tmp_path / "s1", counter)
            # New bytes at the same key while v1 runs; v2 runs and commits first.
            v2_etag = await put_bytes(bucket, KEY, V2)
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            old = await slow  # v1 finishes after v2's commit

            manifest = await read_manifest(bucket, MANIFEST)  # every sha256 checked
            assert manifest["input"]["etag"] == v2_etag
            for out in manifest["outputs"]:
                body = await bucket.get_bytes(out["key"])
                assert hashlib.sha256(body).hexdigest() == hashlib.sha256(V2).hexdigest()
            # v1's uploads were deleted: only the manifest and what it lists remain.
            listed = {o["key"] for o in manifest["outputs"]}
            assert set(await keys_under(bucket, "outputs/")) == listed | {MANIFEST}
            assert old.status == "superseded" and "replaced" in old.message
            # v1 never committed: no done marker, no claims left behind.
            old_ref = JobRef("count", "a.bin", v1_etag)
            assert await keys_under(bucket, old_ref.done_key) == []
            assert await keys_under(bucket, old_ref.claims_prefix) == []

    run(scenario())
    assert executions(counter) == 2


def test_an_input_deleted_mid_run_gets_no_result(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})

    async def scenario() -> None:
        async with target.open() as bucket:
            etag = await put_bytes(bucket, KEY, V1)
            spec = await _claim_one(bucket, config, sleep_s=1.0)
            slow = await _start_slow(bucket, spec, tmp_path / "s1", counter)
            await _user_deletes(target, bucket, KEY)  # after its download
            outcome = await slow
            # Nothing for a consumer: no manifest, no feed record, no outputs.
            assert await keys_under(bucket, "outputs/") == []
            assert await keys_under(bucket, FEED) == []
            assert outcome.status == "superseded" and "deleted" in outcome.message
            ref = JobRef("count", "a.bin", etag)
            assert await keys_under(bucket, ref.done_key) == []
            assert await keys_under(bucket, ref.claims_prefix) == []
            # The same bytes dropped again are processed: nothing marked them done.
            assert await put_bytes(bucket, KEY, V1) == etag
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            manifest = await read_manifest(bucket, MANIFEST)
            assert manifest["input"]["etag"] == etag

    run(scenario())
    assert executions(counter) == 2


def test_a_fenced_attempt_deletes_only_its_own_outputs(target: BucketSpec, tmp_path: Path) -> None:
    """Two attempts of one version: the loser's files go, the winner's stay intact."""
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, KEY, V1)
            first = await _claim_one(bucket, config, sleep_s=1.0)
            slow = await _start_slow(bucket, first, tmp_path / "s1", counter)
            # Another watcher took attempt 2 over (e.g. attempt 1 looked stale) and
            # commits while attempt 1 still runs.
            second = dataclasses.replace(first, attempt=2, params={**first.params, "sleep_s": 0})
            assert await create_claim(bucket, second.ref, 2, claimed_at=second.claimed_at)
            won = await _runner(bucket, tmp_path / "s2").run(second)
            assert won.status == "succeeded"
            lost = await slow
            assert lost.status == "fenced", lost
            manifest = await read_manifest(bucket, MANIFEST)
            assert manifest["attempts"] == 2
            (out,) = manifest["outputs"]
            assert f"/{first.ref.version_dir(2)}/" in out["key"]
            assert set(await keys_under(bucket, "outputs/")) == {out["key"], MANIFEST}
            done = json.loads(await bucket.get_bytes(first.ref.done_key))
            assert done["attempts"] == 2

    run(scenario())
