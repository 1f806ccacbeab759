"""The done index (watcher/done_index.py) and after_success, on both backends.

Every scenario runs real jobs through the real tick and runner on a folder bucket
and on SeaweedFS: the index must never make a finished job run again, never lose
one, and survive being raced, deleted or corrupted.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from handlers.contract.keys import DONE, FEED, INDEX, JobRef, index_key
from handlers.jobs.after_success import apply_after_success
from infra.storage.bucket import Bucket, Listing
from tests.handlers_for_tests import executions
from tests.pipeline_helpers import (
    counting_route,
    keys_under,
    make_config,
    put_bytes,
    read_manifest,
    tick_and_run,
)
from watcher.config import Config
from watcher.done_index import DoneIndex, compact, read_done
from watcher.state import take_snapshot
from watcher.status import collect_status
from watcher.tick import run_tick


def run(bucket: Bucket, coro: Any) -> Any:
    async def main() -> Any:
        try:
            return await coro
        finally:
            await bucket.close()

    return asyncio.run(main())


def config_for(tmp_path: Path, **route: Any) -> Config:
    return make_config(
        {"count": counting_route(tmp_path / "counter", **route)}, index_compact_records=1
    )


async def finish_all(bucket: Bucket, config: Config, tmp_path: Path, ticks: int = 3) -> None:
    for _ in range(ticks):
        await tick_and_run(bucket, config, tmp_path)


class ListedPrefixes(Bucket):
    """A real bucket underneath; records the prefix of every LIST."""

    def __init__(self, inner: Bucket) -> None:
        self.inner, self.url, self.stats = inner, inner.url, inner.stats
        self.prefixes: list[str] = []

    async def list(self, prefix: str, *, start_after: str | None = None) -> Listing:
        self.prefixes.append(prefix)
        return await self.inner.list(prefix, start_after=start_after)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get_to_file(self, key, dest, *, if_match=None):  # type: ignore[no-untyped-def]
        return await self.inner.get_to_file(key, dest, if_match=if_match)

    async def get_bytes(self, key: str) -> bytes:
        return await self.inner.get_bytes(key)

    async def put_file(self, key, src, *, content_type):  # type: ignore[no-untyped-def]
        return await self.inner.put_file(key, src, content_type=content_type)

    async def put_bytes(self, key, body, *, content_type="application/json"):  # type: ignore[no-untyped-def]
        return await self.inner.put_bytes(key, body, content_type=content_type)

    async def create_if_absent(self, key, body, *, content_type="application/json"):  # type: ignore[no-untyped-def]
        return await self.inner.create_if_absent(key, body, content_type=content_type)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def close(self) -> None:
        await self.inner.close()


def test_a_tick_reads_the_index_not_the_done_markers(bucket: Bucket, tmp_path: Path) -> None:
    config = config_for(tmp_path)
    spy = ListedPrefixes(bucket)

    async def scenario() -> None:
        for i in range(5):
            await put_bytes(bucket, f"inputs/count/{i}.bin", f"job {i}".encode())
        await finish_all(spy, config, tmp_path)
        assert executions(tmp_path / "counter") == 5
        spy.prefixes.clear()
        report, outcomes = await tick_and_run(spy, config, tmp_path)
        assert outcomes == [] and report.states["done"] == 5
        assert not any(p.startswith(DONE) for p in spy.prefixes), spy.prefixes
        snapshot = await take_snapshot(spy, config)
        index = snapshot.done_routes["count"].index
        assert index is not None and len(index.done) == 5
        # status: the same index, no done listing either
        spy.prefixes.clear()
        status = await collect_status(spy, config)
        assert status["count"].succeeded == 5
        assert not any(p.startswith(DONE) for p in spy.prefixes), spy.prefixes

    run(bucket, scenario())


def test_concurrent_compactions_leave_one_complete_newest_index(
    bucket: Bucket, tmp_path: Path
) -> None:
    config = config_for(tmp_path)

    async def scenario() -> None:
        for i in range(6):
            await put_bytes(bucket, f"inputs/count/{i}.bin", f"job {i}".encode())
        await finish_all(bucket, config, tmp_path)
        # Eight watchers read the same state and compact at once.
        readings = [await read_done(bucket, ["count"]) for _ in range(8)]
        snapshot = await take_snapshot(bucket, config)
        reports = await asyncio.gather(
            *(
                compact(
                    bucket,
                    r.routes["count"],
                    _policy(),
                    now=snapshot.server_time,
                    inputs=snapshot.inputs["count"],
                    claims={},
                    input_prefix="inputs/count/",
                )
                for r in readings
            )
        )
        assert sum(r.written for r in reports) == 1
        after = await read_done(bucket, ["count"])
        index = after.routes["count"].index
        assert index is not None and len(index.done) == 6
        _report, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert outcomes == [] and executions(tmp_path / "counter") == 6

    run(bucket, scenario())


def _policy() -> Any:
    from watcher.done_index import CompactionPolicy

    return CompactionPolicy(records=1, seconds=0, state_grace_seconds=86_400)


def test_deleted_or_corrupt_index_is_rebuilt_and_nothing_reruns(
    bucket: Bucket, tmp_path: Path
) -> None:
    config = config_for(tmp_path)

    async def scenario() -> None:
        for i in range(4):
            await put_bytes(bucket, f"inputs/count/{i}.bin", f"job {i}".encode())
        await finish_all(bucket, config, tmp_path)
        # Corrupt every generation: truncated gzip, then a wrong count.
        gens = await keys_under(bucket, f"{INDEX}count/")
        assert gens
        await bucket.put_bytes(gens[-1], b"\x1f\x8b\x08\x00garbage")
        for key in gens[:-1]:
            await bucket.put_bytes(key, gzip.compress(json.dumps({"count": 9}).encode()))
        report, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert outcomes == [] and report.index_generations == 1
        assert executions(tmp_path / "counter") == 4
        index = (await read_done(bucket, ["count"])).routes["count"].index
        assert index is not None and len(index.done) == 4
        # Deleted entirely (and the feed with it): rebuilt from the done markers.
        for key in await keys_under(bucket, INDEX) + await keys_under(bucket, FEED):
            await bucket.delete(key)
        report, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert outcomes == [] and report.states["done"] == 4
        assert executions(tmp_path / "counter") == 4

    run(bucket, scenario())


def test_a_job_the_index_missed_is_not_rerun(bucket: Bucket, tmp_path: Path) -> None:
    config = config_for(tmp_path)

    async def scenario() -> None:
        await put_bytes(bucket, "inputs/count/a.bin", b"a")
        await finish_all(bucket, config, tmp_path)
        # An index written as if the job never finished, and no feed record of it.
        snapshot = await take_snapshot(bucket, config)
        old = snapshot.done_routes["count"].index
        assert old is not None
        for key in await keys_under(bucket, FEED):
            await bucket.delete(key)
        blind = DoneIndex("count", old.generation + 1, old.created_at, old.feed_cursor,
                          frozenset(), frozenset())  # fmt: skip
        await bucket.create_if_absent(index_key("count", blind.generation), blind.encode())
        report, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert outcomes == [] and report.index_misses == 1 and not report.claimed
        assert executions(tmp_path / "counter") == 1
        # The miss was folded into a new generation: the next tick needs no GET for it.
        report, _ = await tick_and_run(bucket, config, tmp_path)
        assert report.index_misses == 0 and report.states["done"] == 1

    run(bucket, scenario())


def test_retry_outranks_the_index(bucket: Bucket, tmp_path: Path) -> None:
    from watcher.status import retry_key

    config = config_for(tmp_path)

    async def scenario() -> None:
        await put_bytes(bucket, "inputs/count/a.bin", b"a")
        await finish_all(bucket, config, tmp_path)
        result = await retry_key(bucket, config, "count/a.bin")
        assert result.ok, result.message
        await finish_all(bucket, config, tmp_path)
        assert executions(tmp_path / "counter") == 2
        assert await keys_under(bucket, "_dropgpu/claims/") == []  # the reset marker went too

    run(bucket, scenario())


def test_archive_moves_the_input_and_an_identical_reupload_does_nothing(
    bucket: Bucket, tmp_path: Path
) -> None:
    config = config_for(tmp_path, after_success="archive", archive_prefix="done-inputs/")

    async def scenario() -> None:
        await put_bytes(bucket, "inputs/count/day1/a.bin", b"payload")
        await finish_all(bucket, config, tmp_path)
        assert await keys_under(bucket, "inputs/count/") == []
        assert await bucket.get_bytes("done-inputs/count/day1/a.bin") == b"payload"
        manifest = await read_manifest(bucket, "outputs/count/day1/a.bin/manifest.json")
        assert manifest["input"]["after_success"] == {
            "action": "archive",
            "archive_key": "done-inputs/count/day1/a.bin",
        }
        # The same bytes dropped again: known done, moved away again, not rerun.
        await put_bytes(bucket, "inputs/count/day1/a.bin", b"payload")
        await finish_all(bucket, config, tmp_path, ticks=2)
        assert executions(tmp_path / "counter") == 1
        assert await keys_under(bucket, "inputs/count/") == []

    run(bucket, scenario())


def test_delete_after_success_keeps_failed_inputs(bucket: Bucket, tmp_path: Path) -> None:
    config = config_for(tmp_path, after_success="delete", params={"reject_prefix": "BAD"})

    async def scenario() -> None:
        await put_bytes(bucket, "inputs/count/good.bin", b"good")
        await put_bytes(bucket, "inputs/count/bad.bin", b"BAD input")
        await finish_all(bucket, config, tmp_path)
        assert await keys_under(bucket, "inputs/count/") == ["inputs/count/bad.bin"]
        failed = await read_manifest(bucket, "outputs/count/bad.bin/manifest.json")
        assert failed["status"] == "failed" and "after_success" not in failed["input"]
        ok = await read_manifest(bucket, "outputs/count/good.bin/manifest.json")
        assert ok["input"]["after_success"] == {"action": "delete"}

    run(bucket, scenario())


def test_after_success_never_removes_a_newer_version(bucket: Bucket, tmp_path: Path) -> None:
    async def scenario() -> None:
        etag = await put_bytes(bucket, "inputs/count/a.bin", b"claimed version")
        ref = JobRef("count", "a.bin", etag)
        await put_bytes(bucket, "inputs/count/a.bin", b"uploaded mid-job")
        for action in ("archive", "delete"):
            assert await apply_after_success(bucket, ref, action, "archive/") == "replaced"
        assert await bucket.get_bytes("inputs/count/a.bin") == b"uploaded mid-job"
        assert await keys_under(bucket, "archive/") == []
        # Idempotent: the claimed version of another input, archived twice.
        etag_b = await put_bytes(bucket, "inputs/count/b.bin", b"b")
        ref_b = JobRef("count", "b.bin", etag_b)
        assert await apply_after_success(bucket, ref_b, "archive", "archive/") == "archived"
        assert await apply_after_success(bucket, ref_b, "archive", "archive/") == "already_gone"
        assert await bucket.get_bytes("archive/count/b.bin") == b"b"

    run(bucket, scenario())


def test_state_of_deleted_inputs_is_collected_after_the_grace_period(
    bucket: Bucket, tmp_path: Path
) -> None:
    from handlers.jobs.claims import record_failure

    config = config_for(tmp_path)

    async def tick_at(days: float) -> Any:
        snapshot = await take_snapshot(bucket, config)
        snapshot.server_time += timedelta(days=days)
        return await run_tick(bucket, config, lambda spec: None, snapshot=snapshot)

    async def scenario() -> None:
        await put_bytes(bucket, "inputs/count/kept.bin", b"kept")
        await put_bytes(bucket, "inputs/count/gone.bin", b"gone")
        await finish_all(bucket, config, tmp_path)
        assert len(await keys_under(bucket, DONE)) == 2
        # A job that failed once and whose input was deleted before its retry.
        orphan = JobRef("count", "orphan.bin", "0123456789abcdef0123456789abcdef")
        await record_failure(bucket, orphan, 1, message="boom", retry_at_ms=1)
        await bucket.delete_if_match("inputs/count/gone.bin", await _etag(bucket, "gone.bin"))
        report = await tick_at(0.1)
        assert report.collected == 0  # noticed missing: the grace period starts now
        report = await tick_at(0.5)
        assert report.collected == 0  # still within the grace period (1 day)
        report = await tick_at(2)
        assert report.collected == 2  # the deleted input's state, and the orphan's claims
        left = await keys_under(bucket, DONE)
        assert len(left) == 1 and "kept.bin" in left[0]
        assert await keys_under(bucket, "_dropgpu/claims/") == []
        # Outputs are the user's: never collected.
        assert await keys_under(bucket, "outputs/count/gone.bin/manifest.json")
        # The kept input is still known done: nothing reruns.
        await finish_all(bucket, config, tmp_path, ticks=1)
        assert executions(tmp_path / "counter") == 2

    run(bucket, scenario())


async def _etag(bucket: Bucket, name: str) -> str:
    listing = await bucket.list(f"inputs/count/{name}")
    return listing.objects[0].etag


def test_old_feed_records_are_pruned(bucket: Bucket, tmp_path: Path) -> None:
    from watcher.done_index import prune_feed

    async def scenario() -> None:
        old = f"{FEED}20200101T000000.000Z-{'a' * 24}-count.json"
        new = f"{FEED}29990101T000000.000Z-{'b' * 24}-count.json"
        for key in (old, new):
            await bucket.put_bytes(key, b"{}")
        snapshot_time = (await bucket.list(FEED)).server_time
        assert await prune_feed(bucket, timedelta(days=30), now=snapshot_time) == 1
        assert await keys_under(bucket, FEED) == [new]

    run(bucket, scenario())


def test_index_body_is_deterministic_and_validated() -> None:
    from datetime import UTC, datetime

    index = DoneIndex("count", 3, datetime(2026, 1, 1, tzinfo=UTC), f"{FEED}2026",
                      frozenset({"count/b@e", "count/a@e"}), frozenset({"count/a@e"}))  # fmt: skip
    body = index.encode()
    back = DoneIndex.decode(body, route="count", generation=3)
    assert back.done == index.done and back.failed == index.failed
    for bad in (body[:-4], gzip.compress(b"[]"), body):
        try:
            DoneIndex.decode(bad, route="count", generation=3 if bad is not body else 4)
        except ValueError:
            continue
        raise AssertionError("decoded a bad index")
    assert Counter(json.loads(gzip.decompress(body))["done"]) == Counter(sorted(index.done))


def test_no_state_is_collected_from_an_incomplete_listing(tmp_path: Path) -> None:
    from infra.storage.local import LocalFolderBucket

    root = tmp_path / "bucket"
    (root / "inputs" / "count").mkdir(parents=True)
    bucket = LocalFolderBucket(root)
    config = config_for(tmp_path)

    async def tick_at(days: float) -> Any:
        snapshot = await take_snapshot(bucket, config)
        snapshot.server_time += timedelta(days=days)
        return await run_tick(bucket, config, lambda spec: None, snapshot=snapshot)

    async def scenario() -> None:
        await put_bytes(bucket, "inputs/count/gone.bin", b"gone")
        await finish_all(bucket, config, tmp_path)
        (root / "inputs" / "count" / "gone.bin").unlink()
        # A symlink the walk skips: the listing is not the whole story.
        (root / "inputs" / "count" / "link.bin").symlink_to("/etc/hostname")
        for days in (0.6, 2, 4):
            assert (await tick_at(days)).collected == 0
        assert len(await keys_under(bucket, DONE)) == 1
        (root / "inputs" / "count" / "link.bin").unlink()
        await tick_at(4.6)
        assert (await tick_at(6)).collected == 1

    run(bucket, scenario())
