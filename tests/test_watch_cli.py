"""The `dropgpu` CLI in real subprocesses: concurrency, crashes, errors, doctor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import BucketSpec
from tests.handlers_for_tests import executions
from tests.pipeline_helpers import (
    COUNTING,
    keys_under,
    popen_cli,
    put_bytes,
    read_manifest,
    run,
    run_cli,
)


def counting_toml(path: Path, counter: Path, *, ttl: float = 5, sleep_s: float = 0.0) -> Path:
    path.write_text(
        f"""
[watch]
lease_ttl_seconds = {ttl}
backoff_base_seconds = 0
backoff_max_seconds = 0
interval_seconds = 0.5

[routes.vertical]
enabled = false

[routes.count]
handler = "{COUNTING}"
settle_seconds = 0
params = {{ counter_dir = "{counter}", sleep_s = {sleep_s} }}
"""
    )
    return path


@pytest.mark.slow
def test_concurrent_watchers_process_each_input_exactly_once(
    target: BucketSpec, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    # A generous lease: this test is about races between claimers, not expiry,
    # and a loaded 2-core CI machine can delay a heartbeat by seconds.
    config = counting_toml(tmp_path / "dropgpu.toml", counter, ttl=15, sleep_s=0.05)
    n_inputs = 60

    async def drop() -> None:
        async with target.open() as bucket:
            await asyncio.gather(
                *(
                    put_bytes(bucket, f"inputs/count/batch/{i:03d}.bin", f"input {i}".encode())
                    for i in range(n_inputs)
                )
            )

    run(drop())
    args = ["watch", "--once", "--workers", "2", "--config", str(config), *target.cli_args]
    procs = [popen_cli(args) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]

    async def check() -> None:
        async with target.open() as bucket:
            manifests = [
                k for k in await keys_under(bucket, "outputs/count/") if k.endswith("manifest.json")
            ]
            assert len(manifests) == n_inputs
            for key in manifests:
                m = await read_manifest(bucket, key)
                assert m["status"] == "succeeded" and m["attempts"] == 1
            assert await keys_under(bucket, "_dropgpu/claims/") == []

    run(check())
    # The handler itself ran exactly once per input, across all processes.
    assert executions(counter) == n_inputs
    for i in range(n_inputs):
        assert executions(counter, f"input {i}".encode()) == 1


@pytest.mark.slow
def test_killed_watcher_lease_expires_and_job_is_retried(
    target: BucketSpec, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    # The lease must outlast the next watcher's start-up (seconds on a loaded machine).
    ttl = 6
    slow = counting_toml(tmp_path / "slow.toml", counter, ttl=ttl, sleep_s=60)
    fast = counting_toml(tmp_path / "fast.toml", counter, ttl=ttl, sleep_s=0)

    async def drop() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/victim.bin", b"victim")

    run(drop())
    proc = popen_cli(["watch", "--once", "--workers", "1", "--config", str(slow), *target.cli_args])
    try:
        deadline = time.monotonic() + 60
        while executions(counter) == 0:
            assert time.monotonic() < deadline, "the job never started"
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.1)
    finally:
        # The watcher dies mid-job; its worker (in a session of its own) follows it.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    # While the lease is fresh, another watcher leaves the job alone.
    result = run_cli(["watch", "--once", "--config", str(fast), *target.cli_args])
    assert result.returncode == 0, result.stderr[-2000:]
    assert executions(counter) == 1
    time.sleep(ttl + 0.5)  # the lease expires
    result = run_cli(["watch", "--once", "--config", str(fast), *target.cli_args])
    assert result.returncode == 0, result.stderr[-2000:]

    async def check() -> None:
        async with target.open() as bucket:
            m = await read_manifest(bucket, "outputs/count/victim.bin/manifest.json")
            assert m["status"] == "succeeded" and m["attempts"] == 2
            assert await keys_under(bucket, "_dropgpu/claims/") == []

    run(check())
    assert executions(counter) == 2


def test_status_and_retry_commands(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = counting_toml(tmp_path / "dropgpu.toml", counter)

    async def drop() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/a.bin", b"a")
            await put_bytes(bucket, "inputs/count/REJECT.bin", b"REJECT")

    run(drop())
    common = ["--config", str(config), *target.cli_args]
    before = run_cli(["status", "--json", *common])
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["count"]["pending"] == 2
    assert run_cli(["watch", "--once", "--workers", "1", *common]).returncode == 0
    after = json.loads(run_cli(["status", "--json", *common]).stdout)["count"]
    assert (after["succeeded"], after["failed"], after["pending"]) == (1, 1, 0)
    table = run_cli(["status", *common]).stdout
    assert "count" in table and "succeeded" in table
    retried = run_cli(["retry", "inputs/count/a.bin", *common])
    assert retried.returncode == 0 and "will run again" in retried.stdout
    assert json.loads(run_cli(["status", "--json", *common]).stdout)["count"]["pending"] == 1


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text('[routes.vertical]\nparams = { fps = "fast" }\n')
    result = run_cli(["watch", "--once", "--bucket", str(tmp_path / "b"), "--config", str(cfg)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "routes.vertical.params: fps" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unusable_bucket_is_one_line_exit_2(s3_target: BucketSpec, tmp_path: Path) -> None:
    args = [
        "watch",
        "--once",
        "--bucket",
        "s3://no-such-bucket-here",
        "--endpoint-url",
        s3_target.endpoint_url or "",
    ]
    result = run_cli(args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    bad_scheme = run_cli(["watch", "--once", "--bucket", "gs://elsewhere"])
    assert bad_scheme.returncode == 2 and "Traceback" not in bad_scheme.stderr


def test_doctor_reports_a_safe_store(target: BucketSpec, tmp_path: Path) -> None:
    # No demucs weights on this machine: with the stems routes on, doctor says so.
    result = run_cli(["doctor", *target.cli_args])
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "FAIL model htdemucs" in result.stdout and "dropgpu models pull htdemucs" in result.stdout
    )
    assert "create-if-absent" in result.stdout and "412" in result.stdout
    assert "ffmpeg" in result.stdout
    no_stems = tmp_path / "dropgpu.toml"
    no_stems.write_text("[routes.stems]\nenabled = false\n[routes.karaoke]\nenabled = false\n")
    result = run_cli(["doctor", "--config", str(no_stems), *target.cli_args])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


def test_watch_loop_stops_cleanly_on_ctrl_c(target: BucketSpec, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    config = counting_toml(tmp_path / "dropgpu.toml", counter, sleep_s=60)

    async def drop() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/long.bin", b"long job")

    run(drop())
    proc = popen_cli(["watch", "--workers", "1", "--config", str(config), *target.cli_args])
    deadline = time.monotonic() + 60
    while executions(counter) == 0:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # like a terminal: the whole group gets it
    time.sleep(0.5)
    assert proc.poll() is None, "first Ctrl-C must let the running job finish"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    # Stopped before its job finished: 130, like any command Ctrl-C cuts short.
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err

    async def check() -> None:
        async with target.open() as bucket:
            claims = await keys_under(bucket, "_dropgpu/claims/")
            assert any(k.endswith(".released") for k in claims), claims

    run(check())
    # The released job is claimable at once, and it does not use up an attempt.
    fast = counting_toml(tmp_path / "fast.toml", counter)
    assert run_cli(["watch", "--once", "--config", str(fast), *target.cli_args]).returncode == 0

    async def check_done() -> None:
        async with target.open() as bucket:
            m = await read_manifest(bucket, "outputs/count/long.bin/manifest.json")
            assert m["status"] == "succeeded" and m["attempts"] == 2

    run(check_done())
