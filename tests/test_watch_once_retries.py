"""`watch --once` and scheduled retries: say when the retry is due, or wait for it.

A transient failure schedules a retry (backoff); `--once` used to exit before it
with only "1 retry", leaving the job without a manifest and no hint why.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import BucketSpec
from tests.pipeline_helpers import COUNTING, keys_under, put_bytes, read_manifest, run, run_cli

MANIFEST = "outputs/count/flaky.bin/manifest.json"


def _config(path: Path, counter: Path, *, backoff_s: float) -> Path:
    path.write_text(
        f"""
[watch]
lease_ttl_seconds = 10
backoff_base_seconds = {backoff_s}
backoff_max_seconds = {backoff_s}
interval_seconds = 0.5

[routes.vertical]
enabled = false

[routes.count]
handler = "{COUNTING}"
settle_seconds = 0
params = {{ counter_dir = "{counter}", fail_times = 1 }}
"""
    )
    return path


def _drop(target: BucketSpec) -> None:
    async def go() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/flaky.bin", b"flaky")

    run(go())


def _manifests(target: BucketSpec) -> list[str]:
    async def go() -> list[str]:
        async with target.open() as bucket:
            return [k for k in await keys_under(bucket, "outputs/") if k.endswith("manifest.json")]

    return run(go())


def test_once_says_when_the_retry_is_due_and_who_picks_it_up(
    target: BucketSpec, tmp_path: Path
) -> None:
    config = _config(tmp_path / "dropgpu.toml", tmp_path / "runs", backoff_s=60)
    _drop(target)
    result = run_cli(["watch", "--once", "--config", str(config), *target.cli_args])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("{")]
    assert lines[0] == "dropgpu: 1 retry", lines
    note = " ".join(lines[1:])
    assert "1 job waits for a retry (no manifest yet)" in note, lines
    assert "due in " in note and " UTC" in note and "`dropgpu watch`" in note, lines
    assert "--once --wait-retries" in note, lines
    assert _manifests(target) == []


def test_once_wait_retries_ends_with_the_retried_jobs_manifest(
    target: BucketSpec, tmp_path: Path
) -> None:
    config = _config(tmp_path / "dropgpu.toml", tmp_path / "runs", backoff_s=1)
    _drop(target)
    args = ["watch", "--once", "--wait-retries", "30", "--config", str(config), *target.cli_args]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dropgpu: 1 retry, 1 succeeded" in result.stderr, result.stderr[-3000:]
    assert "waits for a retry" not in result.stderr

    async def check() -> None:
        async with target.open() as bucket:
            m = await read_manifest(bucket, MANIFEST)
            assert m["status"] == "succeeded" and m["attempts"] == 2

    run(check())


def test_wait_retries_does_not_wait_past_its_bound(target: BucketSpec, tmp_path: Path) -> None:
    config = _config(tmp_path / "dropgpu.toml", tmp_path / "runs", backoff_s=120)
    _drop(target)
    args = ["watch", "--once", "--wait-retries", "2", "--config", str(config), *target.cli_args]
    result = run_cli(args, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 job waits for a retry" in result.stderr, result.stderr[-3000:]
    assert _manifests(target) == []


def test_wait_retries_needs_once(tmp_path: Path) -> None:
    result = run_cli(["watch", "--wait-retries", "--bucket", str(tmp_path / "b")])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["dropgpu: --wait-retries needs --once (a running watch always takes retries)"]
