"""Shared helpers for pipeline tests: run ticks and jobs in-process or via the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpu.device import DeviceInfo
from handlers.contract.manifest import validate_manifest
from handlers.jobs.outcome import JobOutcome
from handlers.jobs.runner import JobRunner
from handlers.jobs.spec import JobSpec
from infra.storage.bucket import Bucket
from watcher.config import Config, build_config
from watcher.tick import TickReport, run_tick

REPO = Path(__file__).resolve().parent.parent
COUNTING = "tests.handlers_for_tests:CountingHandler"


def make_config(routes: dict[str, dict[str, Any]], **watch: Any) -> Config:
    settings = {"lease_ttl_seconds": 5, "backoff_base_seconds": 0, "backoff_max_seconds": 0}
    settings.update(watch)
    return build_config({"watch": settings, "routes": routes}, source="test")


def counting_route(counter_dir: Path, **extra: Any) -> dict[str, Any]:
    params = {"counter_dir": str(counter_dir)}
    params.update(extra.pop("params", {}))
    return {"handler": COUNTING, "params": params, "settle_seconds": 0, **extra}


def write_config_file(path: Path, config_toml: str) -> Path:
    path.write_text(config_toml)
    return path


async def tick_and_run(
    bucket: Bucket, config: Config, tmp_path: Path, *, runner: JobRunner | None = None
) -> tuple[TickReport, list[tuple[JobSpec, JobOutcome]]]:
    """One tick, then run every claimed job in this process, in order."""
    claimed: list[JobSpec] = []
    report = await run_tick(bucket, config, claimed.append)
    runner = runner or JobRunner(
        bucket, scratch_root=tmp_path / "scratch", device=DeviceInfo("cpu"), worker_name="test"
    )
    outcomes = [(spec, await runner.run(spec)) for spec in claimed]
    return report, outcomes


async def put_bytes(bucket: Bucket, key: str, data: bytes) -> str:
    return await bucket.put_bytes(key, data, content_type="application/octet-stream")


async def put_file(bucket: Bucket, key: str, path: Path) -> str:
    return await bucket.put_file(key, path, content_type="application/octet-stream")


async def read_manifest(bucket: Bucket, key: str) -> dict[str, Any]:
    """Fetch, schema-validate and check every output's sha256 against the bucket."""
    manifest = validate_manifest(await bucket.get_bytes(key))
    for out in manifest["outputs"]:
        body = await bucket.get_bytes(out["key"])
        assert len(body) == out["size"], out["key"]
        assert hashlib.sha256(body).hexdigest() == out["sha256"], out["key"]
    return manifest


async def keys_under(bucket: Bucket, prefix: str) -> list[str]:
    return [o.key for o in (await bucket.list(prefix)).objects]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["DROPGPU_LOG_FORMAT"] = "json"
    return env


def run_cli(
    args: list[str], *, timeout: float = 240, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=cwd or REPO,
    )


def popen_cli(args: list[str], *, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "watcher.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=cwd or REPO,
        start_new_session=True,  # so a test can SIGKILL the watcher and its workers together
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)
