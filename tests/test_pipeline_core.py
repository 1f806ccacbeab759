"""Tick + runner semantics on both backends, with a handler that counts its runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gpu.device import DeviceInfo
from handlers.contract.keys import JobRef
from handlers.jobs.commit import commit
from handlers.jobs.runner import JobRunner
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError, TransientStorageError
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
from watcher.status import collect_status, retry_key
from watcher.tick import run_tick


def test_job_runs_once_and_manifest_is_valid(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/live/set 1.bin", b"hello world")
            report, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            manifest = await read_manifest(bucket, "outputs/count/live/set 1.bin/manifest.json")
            assert manifest["status"] == "succeeded"
            assert manifest["attempts"] == 1
            assert manifest["input"]["key"] == "inputs/count/live/set 1.bin"
            # Outputs go to a folder of their own version (and attempt): <job hash>-<attempt>.
            ref = JobRef("count", "live/set 1.bin", manifest["input"]["etag"])
            assert ref.version_dir(1) == f"{ref.job_hash}-1"
            folder = f"outputs/count/live/set 1.bin/{ref.version_dir(1)}"
            assert manifest["outputs"][0]["key"] == f"{folder}/copy.bin"
            assert manifest["runtime"]["device"] == "cpu"
            # Claims are cleaned up; only the done marker remains.
            assert await keys_under(bucket, "_dropgpu/claims/") == []
            assert len(await keys_under(bucket, "_dropgpu/done/")) == 1
            # A second tick finds nothing to do.
            report, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert not outcomes and report.states["done"] == 1

    run(scenario())
    assert executions(counter) == 1


def test_same_bytes_are_not_new_work_new_bytes_are(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})
    key = "inputs/count/clip.bin"

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, key, b"version one")
            await tick_and_run(bucket, config, tmp_path)
            first = await read_manifest(bucket, "outputs/count/clip.bin/manifest.json")
            await put_bytes(bucket, key, b"version one")  # a sync tool re-uploads
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert outcomes == []
            await put_bytes(bucket, key, b"version two!")
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            second = await read_manifest(bucket, "outputs/count/clip.bin/manifest.json")
            assert second["input"]["etag"] != first["input"]["etag"]
            # Each version's outputs have keys of their own: the manifest names v2's.
            new_key, old_key = second["outputs"][0]["key"], first["outputs"][0]["key"]
            assert new_key != old_key
            assert (await bucket.get_bytes(new_key)) == b"version two!"
            assert (await bucket.get_bytes(old_key)) == b"version one"  # kept, not overwritten

    run(scenario())
    assert executions(counter) == 2


def test_litter_is_ignored_and_odd_keys_work(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})
    # ~905-byte key. Local filesystems and SeaweedFS cap one path segment at 255 bytes.
    long_rel = "/".join(["é" * 110] * 4) + "/long.bin"
    good = ["Привет мир/日本語 ファイル.bin", "with  spaces/and+plus&amp.bin", long_rel]
    litter = [".DS_Store", "sub/._x.bin", "Thumbs.db", "y.bin.partial", "z.bin.tmp", "folder/"]

    async def scenario() -> None:
        async with target.open() as bucket:
            for i, rel in enumerate(good):
                await put_bytes(bucket, f"inputs/count/{rel}", f"good {i}".encode())
            for rel in litter:
                if target.kind == "local" and rel.endswith("/"):
                    continue  # a local folder has no folder-marker objects
                await put_bytes(bucket, f"inputs/count/{rel}", b"litter")
            report, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert sorted(o.status for _, o in outcomes) == ["succeeded"] * len(good)
            for rel in good:
                manifest = await read_manifest(bucket, f"outputs/count/{rel}/manifest.json")
                assert manifest["input"]["key"] == f"inputs/count/{rel}"
            assert report.states["ignored"] == len(litter) - (1 if target.kind == "local" else 0)
            for key in await keys_under(bucket, "_dropgpu/"):
                assert len(key.encode()) < 1024

    run(scenario())
    assert executions(counter) == len(good)


def test_unsafe_key_gets_a_failed_manifest_without_running(
    s3_target: BucketSpec, tmp_path: Path
) -> None:
    """'..' segments are legal S3 keys but dangerous to downstream sync tools."""
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})

    async def scenario() -> None:
        async with s3_target.open() as bucket:
            key = "inputs/count/a/../b.bin"
            try:
                await put_bytes(bucket, key, b"data")
            except BucketError:
                # SeaweedFS refuses '.'/'..' segments (400): nothing unsafe can reach us.
                # AWS S3 and R2 store such keys verbatim; the layout test covers those.
                return
            if key not in await keys_under(bucket, "inputs/count/"):
                return  # the store normalised the key itself
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["failed"]
            assert "'..'" in outcomes[0][1].message
            assert await bucket.get_bytes(key) == b"data"

    run(scenario())
    assert executions(counter) == 0


def test_input_error_fails_at_once_and_input_is_untouched(
    target: BucketSpec, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})

    async def scenario() -> None:
        async with target.open() as bucket:
            etag = await put_bytes(bucket, "inputs/count/bad.bin", b"REJECT me")
            await put_bytes(bucket, "inputs/count/notes.txt", b"not a supported type")
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert sorted(o.status for _, o in outcomes) == ["failed", "failed"]
            bad = await read_manifest(bucket, "outputs/count/bad.bin/manifest.json")
            assert bad["error"]["kind"] == "input" and bad["outputs"] == []
            txt = await read_manifest(bucket, "outputs/count/notes.txt/manifest.json")
            assert "unsupported file type '.txt'" in txt["error"]["message"]
            listing = await bucket.list("inputs/count/bad.bin")
            assert listing.objects[0].etag == etag
            assert await bucket.get_bytes("inputs/count/bad.bin") == b"REJECT me"
            status = await collect_status(bucket, config)
            assert status["count"].failed == 2

    run(scenario())
    assert executions(counter) == 1  # the .txt never reached the handler


def test_error_messages_quote_names_so_a_trailing_space_shows(
    target: BucketSpec, tmp_path: Path
) -> None:
    """'unsupported file type .mp4' for 'clip.mp4 ' read as nonsense: the space must show."""
    config = make_config({"count": counting_route(tmp_path / "runs")})

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/clip.mp4 ", b"video")
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["failed"]
            manifest = await read_manifest(bucket, "outputs/count/clip.mp4 /manifest.json")
            message = manifest["error"]["message"]
            assert message.startswith("unsupported file type '.mp4 ' for route 'count': ")
            assert "'clip.mp4 '" in message, message

    run(scenario())


def test_a_key_too_long_for_its_outputs_fails_before_running(
    target: BucketSpec, tmp_path: Path
) -> None:
    """Its version folder would push output keys past S3's 1,024 bytes: fail, don't upload."""
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})
    rel = "/".join(["d" * 200] * 4) + "/" + "k" * 140 + ".bin"  # ~950 bytes: the input fits

    async def scenario() -> None:
        async with target.open() as bucket:
            etag = await put_bytes(bucket, f"inputs/count/{rel}", b"data")
            ref = JobRef("count", rel, etag)
            assert not ref.manifest_key_fits()
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["failed"]
            assert "object key too long" in outcomes[0][1].message
            assert await keys_under(bucket, "outputs/") == []  # nothing uploaded
            done = json.loads(await bucket.get_bytes(ref.done_key))  # the result lives here
            assert done["error"]["kind"] == "input"
            assert await keys_under(bucket, ref.failed_index_key) == [ref.failed_index_key]

    run(scenario())
    assert executions(counter) == 0


def test_transient_failures_retry_then_give_up(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config(
        {
            "flaky": counting_route(counter / "flaky", params={"fail_times": 1}, max_attempts=3),
            "broken": counting_route(counter / "broken", params={"fail_times": 99}, max_attempts=2),
        }
    )

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/flaky/a.bin", b"a")
            await put_bytes(bucket, "inputs/broken/b.bin", b"b")
            for _ in range(4):
                await tick_and_run(bucket, config, tmp_path)
                await asyncio.sleep(1.1)  # S3 Date headers have whole-second resolution
            flaky = await read_manifest(bucket, "outputs/flaky/a.bin/manifest.json")
            assert flaky["status"] == "succeeded" and flaky["attempts"] == 2
            broken = await read_manifest(bucket, "outputs/broken/b.bin/manifest.json")
            assert broken["status"] == "failed"
            assert broken["error"]["kind"] == "gave_up"
            assert broken["error"]["message"].startswith("gave up after 2 attempts")
            assert "injected transient failure" in broken["error"]["message"]
            assert broken["attempts"] == 2

    run(scenario())
    assert executions(counter / "flaky") == 2
    assert executions(counter / "broken") == 2


class FlakyUploads(Bucket):
    """Real storage underneath; put_file fails the first ``failures`` times."""

    def __init__(self, inner: Bucket, failures: int) -> None:
        self.inner, self.failures = inner, failures
        self.url, self.stats = inner.url, inner.stats

    async def put_file(self, key, src, *, content_type):  # type: ignore[no-untyped-def]
        if self.failures > 0:
            self.failures -= 1
            raise TransientStorageError(f"injected 503 SlowDown on {key}")
        return await self.inner.put_file(key, src, content_type=content_type)

    async def list(self, prefix, *, start_after=None):  # type: ignore[no-untyped-def]
        return await self.inner.list(prefix, start_after=start_after)

    async def get_to_file(self, key, dest, *, if_match=None):  # type: ignore[no-untyped-def]
        return await self.inner.get_to_file(key, dest, if_match=if_match)

    async def get_bytes(self, key):  # type: ignore[no-untyped-def]
        return await self.inner.get_bytes(key)

    async def put_bytes(self, key, body, *, content_type="application/json"):  # type: ignore[no-untyped-def]
        return await self.inner.put_bytes(key, body, content_type=content_type)

    async def create_if_absent(self, key, body, *, content_type="application/json"):  # type: ignore[no-untyped-def]
        return await self.inner.create_if_absent(key, body, content_type=content_type)

    async def delete(self, key):  # type: ignore[no-untyped-def]
        return await self.inner.delete(key)


def test_storage_errors_during_upload(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})

    async def scenario() -> None:
        async with target.open() as real:
            await put_bytes(real, "inputs/count/a.bin", b"aaa")
            # Two faults are absorbed by the upload retries inside one attempt.
            bucket = FlakyUploads(real, failures=2)
            runner = JobRunner(bucket, scratch_root=tmp_path / "s", device=DeviceInfo("cpu"))
            _, outcomes = await tick_and_run(bucket, config, tmp_path, runner=runner)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            assert (await read_manifest(real, "outputs/count/a.bin/manifest.json"))["attempts"] == 1

            # A storage outage longer than the retries fails the attempt: nothing
            # is committed, no manifest, and the next attempt succeeds.
            await put_bytes(real, "inputs/count/b.bin", b"bbb")
            bucket = FlakyUploads(real, failures=100)
            runner = JobRunner(bucket, scratch_root=tmp_path / "s", device=DeviceInfo("cpu"))
            _, outcomes = await tick_and_run(bucket, config, tmp_path, runner=runner)
            assert [o.status for _, o in outcomes] == ["retry"]
            assert "injected 503" in outcomes[0][1].message
            assert await keys_under(real, "outputs/count/b.bin/") == []
            ref = JobRef("count", "b.bin", (await real.list("inputs/count/b.bin")).objects[0].etag)
            assert await keys_under(real, ref.done_key) == []
            await asyncio.sleep(1.1)  # the retry time is compared with the store's clock
            _, outcomes = await tick_and_run(real, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            manifest = await read_manifest(real, "outputs/count/b.bin/manifest.json")
            assert manifest["attempts"] == 2

    run(scenario())


def test_interrupted_commit_is_repaired(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)}, lease_ttl_seconds=2)

    async def scenario() -> None:
        async with target.open() as bucket:
            etag = await put_bytes(bucket, "inputs/count/a.bin", b"aaa")
            ref = JobRef("count", "a.bin", etag)
            # A worker won the fence and died before writing manifest.json.
            body = json.dumps({"status": "succeeded", "fake": "manifest"}).encode()
            await bucket.create_if_absent(ref.claim_key(1), b"{}")
            assert await bucket.create_if_absent(ref.done_key, body)
            report, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert outcomes == [] and report.repaired == 0  # claim still fresh
            await asyncio.sleep(3.2)
            report, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert outcomes == [] and report.repaired == 1
            assert await bucket.get_bytes(ref.manifest_key) == body
            assert await keys_under(bucket, ref.claims_prefix) == []

    run(scenario())
    assert executions(counter) == 0


def test_fence_allows_one_commit(target: BucketSpec, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with target.open() as bucket:
            etag = await put_bytes(bucket, "inputs/count/a.bin", b"aaa")
            ref = JobRef("count", "a.bin", etag)
            first = await commit(bucket, ref, b'{"status": "succeeded", "n": 1}', failed=False)
            second = await commit(bucket, ref, b'{"status": "succeeded", "n": 2}', failed=False)
            assert (first, second) == (True, False)
            assert json.loads(await bucket.get_bytes(ref.manifest_key))["n"] == 1

    run(scenario())


def test_retry_command_runs_a_finished_job_again(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/a.bin", b"aaa")
            await tick_and_run(bucket, config, tmp_path)
            result = await retry_key(bucket, config, "inputs/count/a.bin")
            assert result.ok, result.message
            missing = await retry_key(bucket, config, "inputs/count/nope.bin")
            assert not missing.ok and "no such input" in missing.message
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]

    run(scenario())
    assert executions(counter) == 2


def test_input_replaced_while_claimed_is_dropped(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)})

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/a.bin", b"old bytes")
            claimed: list = []
            await run_tick(bucket, config, claimed.append)
            await put_bytes(bucket, "inputs/count/a.bin", b"new bytes!")
            runner = JobRunner(bucket, scratch_root=tmp_path / "s", device=DeviceInfo("cpu"))
            outcome = await runner.run(claimed[0])
            assert outcome.status == "superseded"
            assert await keys_under(bucket, "outputs/") == []
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            manifest = await read_manifest(bucket, "outputs/count/a.bin/manifest.json")
            assert await bucket.get_bytes(manifest["outputs"][0]["key"]) == b"new bytes!"

    run(scenario())
    assert executions(counter) == 1
