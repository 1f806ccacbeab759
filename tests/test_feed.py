"""The completion feed: one record per commit, resumable from any key, repaired when lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from handlers.contract.consumer import ConsumerError, FeedItem, iter_feed, parse_since
from handlers.contract.feed import build_feed_record
from handlers.contract.keys import FEED, JobRef, parse_feed_key
from handlers.jobs.commit import commit
from infra.storage.bucket import Bucket
from infra.storage.errors import TransientStorageError
from tests.conftest import BucketSpec
from tests.pipeline_helpers import (
    REPO,
    cli_env,
    counting_route,
    keys_under,
    make_config,
    put_bytes,
    run,
    tick_and_run,
)
from watcher.cli.feed import RESUME_SLACK_S


async def _all(bucket: Bucket, **kwargs: object) -> list[FeedItem]:
    return [item async for item in iter_feed(bucket, **kwargs)]  # type: ignore[arg-type]


def test_each_commit_writes_one_record(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = make_config(
        {
            "count": counting_route(counter),
            "broken": counting_route(counter, params={"fail_times": 99}, max_attempts=1),
        }
    )

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/live/set 1.bin", b"good")
            await put_bytes(bucket, "inputs/count/bad.bin", b"REJECT me")
            await put_bytes(bucket, "inputs/broken/b.bin", b"flaky")
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert sorted(o.status for _, o in outcomes) == ["failed", "failed", "succeeded"]

            keys = await keys_under(bucket, FEED)
            assert len(keys) == 3 and all(parse_feed_key(k) for k in keys)
            items = {i.input_key: i for i in await _all(bucket)}
            good = items["inputs/count/live/set 1.bin"]
            assert good.status == "succeeded" and good.route == "count"
            assert good.manifest_key == "outputs/count/live/set 1.bin/manifest.json"
            manifest = json.loads(await bucket.get_bytes(good.manifest_key))
            assert good.etag == manifest["input"]["etag"]
            assert good.job_id == manifest["job_id"]
            assert items["inputs/count/bad.bin"].status == "failed"
            assert items["inputs/broken/b.bin"].status == "failed"  # the runner's give-up
            assert [i.route for i in await _all(bucket, route="broken")] == ["broken"]
            # Nothing new: a second tick commits nothing, so the feed does not grow.
            await tick_and_run(bucket, config, tmp_path)
            assert len(await keys_under(bucket, FEED)) == 3

    run(scenario())


async def _commit_many(bucket: Bucket, n: int) -> list[str]:
    for i in range(n):
        route = "even" if i % 2 == 0 else "odd"
        ref = JobRef(route, f"clip {i:03d}.bin", f"etag{i}")
        body = json.dumps({"status": "succeeded", "n": i}).encode()
        assert await commit(bucket, ref, body, failed=False)
    return await keys_under(bucket, FEED)


def test_resuming_from_any_key_misses_nothing(bucket: Bucket) -> None:
    async def scenario() -> None:
        keys = await _commit_many(bucket, 16)
        assert len(keys) == 16 and keys == sorted(keys)
        everything = [i.key for i in await _all(bucket)]
        assert everything == keys
        for n, key in enumerate(keys):
            # Strict resumption (no overlap): exactly the later records, in order.
            after = [i.key for i in await _all(bucket, since=key, overlap_s=0)]
            assert after == keys[n + 1 :]
            # With the overlap re-read: a superset, still in order, nothing missed.
            again = [i.key for i in await _all(bucket, since=key)]
            assert set(keys[n + 1 :]) <= set(again) and again == sorted(again)
            assert key not in again
            # Passing the keys already handled makes the re-read exactly-once.
            exact = [i.key for i in await _all(bucket, since=key, seen=keys[: n + 1])]
            assert exact == keys[n + 1 :]
        # A time cursor: records at or after it.
        first = parse_feed_key(keys[0])
        assert first is not None
        assert [i.key for i in await _all(bucket, since=first.time)] == keys
        odd = [i for i in await _all(bucket, route="odd")]
        assert len(odd) == 8 and {i.route for i in odd} == {"odd"}
        await bucket.close()

    asyncio.run(scenario())


def test_following_catches_late_records_and_ignores_clocks_ahead(bucket: Bucket) -> None:
    """A record that lands late with an earlier time is still seen, within the overlap."""

    async def put_record(i: int, at: datetime) -> str:
        key, body = build_feed_record(
            JobRef("count", f"f{i}.bin", f"e{i}"), failed=False, committed_at=at
        )
        await bucket.put_bytes(key, body)
        return key

    async def scenario() -> None:
        now = datetime.now(UTC)
        got: list[str] = []
        arrived = asyncio.Event()

        async def follower() -> None:
            async for item in iter_feed(bucket, follow=True, poll=0.05, overlap_s=60):
                got.append(item.key)
                arrived.set()

        async def wait_for(n: int) -> None:
            while len(got) < n:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), timeout=20)

        task = asyncio.create_task(follower())
        try:
            a = await put_record(1, now)
            await wait_for(1)
            # A writer whose clock is an hour ahead must not move the window past others.
            ahead = await put_record(2, now + timedelta(hours=1))
            await wait_for(2)
            # A writer 30 s behind: its record sorts before what was already seen.
            late = await put_record(3, now - timedelta(seconds=30))
            await wait_for(3)
            assert got == [a, ahead, late]
            await asyncio.sleep(0.3)  # more polls: nothing is yielded twice
            assert got == [a, ahead, late]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Without an overlap, resuming after the newest key misses the late record:
        # the documented reason for overlap_s.
        assert late not in [i.key for i in await _all(bucket, since=a, overlap_s=0)]
        await bucket.close()

    asyncio.run(scenario())


class FailingFeedWrites(Bucket):
    """Real storage underneath; every write under the feed prefix fails (an outage)."""

    def __init__(self, inner: Bucket) -> None:
        self.inner = inner
        self.url, self.stats = inner.url, inner.stats

    async def put_bytes(self, key, body, *, content_type="application/json"):  # type: ignore[no-untyped-def]
        if key.startswith(FEED):
            raise TransientStorageError(f"injected 503 on {key}")
        return await self.inner.put_bytes(key, body, content_type=content_type)

    async def list(self, prefix, *, start_after=None):  # type: ignore[no-untyped-def]
        return await self.inner.list(prefix, start_after=start_after)

    async def get_to_file(self, key, dest, *, if_match=None):  # type: ignore[no-untyped-def]
        return await self.inner.get_to_file(key, dest, if_match=if_match)

    async def get_bytes(self, key):  # type: ignore[no-untyped-def]
        return await self.inner.get_bytes(key)

    async def put_file(self, key, src, *, content_type):  # type: ignore[no-untyped-def]
        return await self.inner.put_file(key, src, content_type=content_type)

    async def create_if_absent(self, key, body, *, content_type="application/json"):  # type: ignore[no-untyped-def]
        return await self.inner.create_if_absent(key, body, content_type=content_type)

    async def delete(self, key):  # type: ignore[no-untyped-def]
        return await self.inner.delete(key)


def test_lost_feed_record_never_fails_the_job_and_is_repaired(
    target: BucketSpec, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    config = make_config({"count": counting_route(counter)}, lease_ttl_seconds=2)

    async def scenario() -> None:
        async with target.open() as real:
            await put_bytes(real, "inputs/count/a.bin", b"aaa")
            _, outcomes = await tick_and_run(FailingFeedWrites(real), config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            assert await real.get_bytes("outputs/count/a.bin/manifest.json")
            assert await keys_under(real, FEED) == []
            # The claim was kept: to the next ticks this is an interrupted commit.
            assert await keys_under(real, "_dropgpu/claims/")
            await asyncio.sleep(3.2)  # past the lease TTL, on the store's clock
            report, outcomes = await tick_and_run(real, config, tmp_path)
            assert outcomes == [] and report.repaired == 1
            items = await _all(real)
            assert [i.input_key for i in items] == ["inputs/count/a.bin"]
            assert await keys_under(real, "_dropgpu/claims/") == []

    run(scenario())


def _feed_json(spec: BucketSpec, *args: str) -> list[str]:
    done = subprocess.run(
        _feed_cli(*spec.cli_args, "--json", *args),
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line)["key"] for line in done.stdout.splitlines()]


def test_feed_since_key_resumes_after_it_and_still_prints_late_records(
    bucket_spec: BucketSpec,
) -> None:
    async def put_record(name: str, at: datetime) -> str:
        async with bucket_spec.open() as bucket:
            key, body = build_feed_record(
                JobRef("count", name, "e1"), failed=False, committed_at=at
            )
            await bucket.put_bytes(key, body)
            return key

    a = run(put_record("a.bin", datetime.now(UTC)))
    b = run(put_record("b.bin", datetime.now(UTC)))
    # Landed well before c: a consumer that handled c had them (+1 s: a store's
    # LastModified may have whole seconds only).
    time.sleep(RESUME_SLACK_S + 1.2)
    c = run(put_record("c.bin", datetime.now(UTC)))
    d = run(put_record("d.bin", datetime.now(UTC)))
    assert [a, b, c, d] == sorted([a, b, c, d])

    # "Resume after": a and b are in the re-read overlap window, but not printed again.
    assert _feed_json(bucket_spec, "--since", c) == [d]
    # A writer 30 s behind commits after c: its key sorts before c, yet it is new.
    late_at = (parse_feed_key(c) or pytest.fail("c")).time - timedelta(seconds=30)
    late = run(put_record("late.bin", late_at))
    assert late < a
    assert _feed_json(bucket_spec, "--since", c) == [late, d]
    # It landed after d too: whoever handled d may not have seen it. c landed less than
    # RESUME_SLACK_S before d (it may still have been in flight): printed again, too.
    assert _feed_json(bucket_spec, "--since", d) == [late, c]
    # With a 10 s window the late record is out of reach; c is still printed again.
    assert _feed_json(bucket_spec, "--since", d, "--overlap", "10") == [c]

    # The resume key expired (lifecycle rule): nothing known, the window is printed again.
    async def expire(key: str) -> None:
        async with bucket_spec.open() as bucket:
            await bucket.delete(key)

    run(expire(c))
    assert _feed_json(bucket_spec, "--since", c) == [late, a, b, d]


def test_parse_since_forms() -> None:
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    key = "_dropgpu/feed/20250131T115959.123Z-" + "a" * 24 + "-count.json"
    assert parse_since(key) == key
    assert parse_since(key[len(FEED) :]) == key
    assert parse_since("2025-01-31T11:00:00Z") == now - timedelta(hours=1)
    assert parse_since("2025-01-31T11:00:00") == now - timedelta(hours=1)  # naive is UTC
    assert parse_since("15m", now=now) == now - timedelta(minutes=15)
    assert parse_since("now", now=now) == now
    with pytest.raises(ConsumerError, match="expected a feed key, an ISO time"):
        parse_since("yesterday")


def _feed_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "watcher.cli", "feed", *args]


def test_feed_command(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    (root / "inputs").mkdir(parents=True)

    async def fill() -> list[str]:
        async with BucketSpec("local", str(root)).open() as bucket:
            return await _commit_many(bucket, 3)

    keys = run(fill())
    env = cli_env()
    done = subprocess.run(
        _feed_cli("--bucket", str(root), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["key"] for r in lines] == keys
    assert lines[0]["manifest_key"] == "outputs/even/clip 000.bin/manifest.json"

    text = subprocess.run(
        _feed_cli("--bucket", str(root), "--since", keys[0], "--overlap", "0", "--route", "odd"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert text.returncode == 0, text.stderr
    assert len(text.stdout.splitlines()) == 1 and "inputs/odd/clip 001.bin" in text.stdout

    bad = subprocess.run(
        _feed_cli("--bucket", str(root), "--since", "last tuesday"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert "--since 'last tuesday'" in bad.stderr

    # --follow prints what lands later, and Ctrl-C ends it cleanly.
    proc = subprocess.Popen(
        _feed_cli(
            "--bucket", str(root), "--json", "--follow", "--poll", "0.1", "--since", keys[-1]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:

        async def one_more() -> None:
            async with BucketSpec("local", str(root)).open() as bucket:
                ref = JobRef("late", "new.bin", "etag-new")
                assert await commit(bucket, ref, b'{"status": "failed"}', failed=True)

        run(one_more())
        assert proc.stdout is not None
        # Re-read window first (the earlier records), then the new one.
        for line in proc.stdout:
            if json.loads(line)["input_key"] == "inputs/late/new.bin":
                assert json.loads(line)["status"] == "failed"
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
