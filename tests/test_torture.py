"""Torture: several watcher processes on one bucket, workers SIGKILLed, 5% storage faults.

The harness (``run_torture``) is shared with ``bench/bench_torture.py``. Watchers
reach SeaweedFS through the fault proxy; every check afterwards reads the bucket
directly (no proxy) and the CountingHandler's per-execution files:

- every input has exactly one final manifest, and it succeeded;
- no job's handler ran more times than its manifest's attempt count;
- every manifest output exists with its size and sha256;
- no input changed (key set, ETag and bytes as dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from infra.s3_server import SeaweedS3Server
from infra.storage.s3 import S3Bucket
from tests.fault_proxy import FaultProxy, FaultRates
from tests.handlers_for_tests import executions
from tests.pipeline_helpers import COUNTING, REPO, cli_env, read_manifest

log = structlog.get_logger(__name__)
ROUTE = "count"
# The second route archives its inputs after success (after_success = "archive").
ARCHIVE_ROUTE = "countarc"
ROUTES = (ROUTE, ARCHIVE_ROUTE)


@dataclass
class TortureSettings:
    inputs: int = 150
    watchers: int = 3
    workers: int = 2
    fault_rate: float = 0.05
    chaos_s: float = 30.0
    deadline_s: float = 150.0
    lease_ttl_s: float = 3.0
    max_attempts: int = 25
    sleep_s: float = 0.1
    kill_every_s: tuple[float, float] = (0.5, 2.0)
    group_kill_share: float = 0.25  # of kills, the share that take a whole watcher group
    seed: int = 1
    # A new done index generation every few completions: compaction races all the time.
    index_compact_records: int = 5


@dataclass
class TortureReport:
    settings: dict[str, Any]
    wall_s: float = 0.0
    kills: Counter[str] = field(default_factory=Counter)
    faults: dict[str, int] = field(default_factory=dict)
    attempts: Counter[int] = field(default_factory=Counter)
    executions: Counter[int] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    leftover_claims: int = 0
    watcher_restarts: int = 0
    unexpected_errors: int = 0
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "wall_s": round(self.wall_s, 1),
            "kills": dict(self.kills),
            "injected_faults": self.faults,
            "attempts_histogram": {str(k): v for k, v in sorted(self.attempts.items())},
            "handler_executions_histogram": {str(k): v for k, v in sorted(self.executions.items())},
            "manifest_statuses": dict(self.statuses),
            "leftover_claims": self.leftover_claims,
            "watcher_restarts": self.watcher_restarts,
            "unexpected_error_log_lines": self.unexpected_errors,
            "violations": self.violations,
        }


def _config(path: Path, counter: Path, s: TortureSettings) -> Path:
    path.write_text(
        f"""
[watch]
lease_ttl_seconds = {s.lease_ttl_s}
backoff_base_seconds = 0.2
backoff_max_seconds = 1
interval_seconds = 0.5
max_claims_per_tick = 16
index_compact_records = {s.index_compact_records}
index_compact_seconds = 1

[routes.vertical]
enabled = false

[routes.{ROUTE}]
handler = "{COUNTING}"
settle_seconds = 0
max_attempts = {s.max_attempts}
params = {{ counter_dir = "{counter}", sleep_s = {s.sleep_s} }}

[routes.{ARCHIVE_ROUTE}]
handler = "{COUNTING}"
settle_seconds = 0
max_attempts = {s.max_attempts}
after_success = "archive"
params = {{ counter_dir = "{counter}", sleep_s = {s.sleep_s} }}
"""
    )
    return path


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def worker_pids(watcher_pid: int) -> list[int]:
    """The watcher's multiprocessing workers (not its resource tracker)."""
    out = []
    for child in _children(watcher_pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(child)
    return out


class Watchers:
    def __init__(self, args: list[str], logs: Path) -> None:
        self.args = args
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes] | None] = []
        self.started = 0

    def start(self, i: int) -> None:
        out = (self.logs / f"watcher-{i}-{self.started}.log").open("wb")
        self.started += 1
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcher.cli", *self.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            cwd=REPO,
            start_new_session=True,
        )
        out.close()
        if i < len(self.procs):
            self.procs[i] = proc
        else:
            self.procs.append(proc)

    def kill_group(self, i: int) -> None:
        proc = self.procs[i]
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.procs[i] = None

    def stop_all(self) -> list[int | None]:
        codes: list[int | None] = []
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
        for i, proc in enumerate(self.procs):
            if proc is None:
                codes.append(None)
                continue
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                self.kill_group(i)
                codes.append(-9)
        # A killed watcher's workers are in its group; make sure none survive.
        for proc in self.procs:
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        return codes


async def _drop_inputs(bucket: S3Bucket, n: int, rng: random.Random) -> dict[str, bytes]:
    inputs = {
        f"inputs/{ROUTES[i % 2]}/t{i // 50:02d}/in-{i:04d}.bin": (
            f"torture {i} {rng.random()}".encode()
        )
        for i in range(n)
    }
    limit = asyncio.Semaphore(16)

    async def put(key: str, body: bytes) -> None:
        async with limit:
            await bucket.put_bytes(key, body, content_type="application/octet-stream")

    await asyncio.gather(*(put(k, v) for k, v in inputs.items()))
    return inputs


async def _manifest_count(bucket: S3Bucket) -> int:
    n = 0
    for route in ROUTES:
        listing = await bucket.list(f"outputs/{route}/")
        n += sum(1 for o in listing.objects if o.key.endswith("/manifest.json"))
    return n


def _output_key(input_key: str) -> str:
    route, rel = input_key[len("inputs/") :].split("/", 1)
    return f"outputs/{route}/{rel}/manifest.json"


async def _check(
    bucket: S3Bucket, inputs: dict[str, bytes], counter: Path, report: TortureReport
) -> None:
    v = report.violations
    manifests = {
        o.key
        for route in ROUTES
        for o in (await bucket.list(f"outputs/{route}/")).objects
        if o.key.endswith(".json")
    }
    expected = {_output_key(k) for k in inputs}
    if manifests != expected:
        v.append(f"manifest keys differ: missing {len(expected - manifests)}, ")
        v[-1] += f"extra {len(manifests - expected)}"
    for key, body in inputs.items():
        mkey = _output_key(key)
        if mkey not in manifests:
            continue
        try:
            m = await read_manifest(bucket, mkey)  # schema + every output's size and sha256
        except (AssertionError, Exception) as e:  # report all violations, not the first
            v.append(f"{mkey}: bad manifest or outputs: {type(e).__name__}: {e}")
            continue
        report.statuses[m["status"]] += 1
        report.attempts[m["attempts"]] += 1
        runs = executions(counter, body)
        report.executions[runs] += 1
        if m["status"] != "succeeded":
            v.append(f"{key}: {m['status']}: {m['error']}")
        if m["input"]["etag"] != hashlib.md5(body).hexdigest():
            v.append(f"{key}: manifest etag {m['input']['etag']} is not the input's")
        if not 1 <= runs <= m["attempts"]:
            v.append(f"{key}: handler ran {runs} times in {m['attempts']} attempts")
    kept = {k: b for k, b in inputs.items() if k.startswith(f"inputs/{ROUTE}/")}
    listed = {o.key: o for o in (await bucket.list(f"inputs/{ROUTE}/")).objects}
    if set(listed) != set(kept):
        v.append("the set of input keys changed")
    for key, body in kept.items():
        if key in listed and (await bucket.get_bytes(key)) != body:
            v.append(f"{key}: input bytes changed")
    # The archive route: every input moved, byte for byte, none left behind.
    if (await bucket.list(f"inputs/{ARCHIVE_ROUTE}/")).objects:
        v.append(f"inputs left under inputs/{ARCHIVE_ROUTE}/ after archiving")
    for key, body in inputs.items():
        if key.startswith(f"inputs/{ARCHIVE_ROUTE}/"):
            try:
                archived = await bucket.get_bytes(f"archive/{key[len('inputs/') :]}")
            except Exception as e:  # report all violations, not the first
                v.append(f"{key}: not archived: {type(e).__name__}")
                continue
            if archived != body:
                v.append(f"{key}: archived bytes differ")
    done = (await bucket.list("_dropgpu/done/")).objects
    if len(done) != len(inputs):
        v.append(f"{len(done)} done markers for {len(inputs)} inputs")
    report.leftover_claims = len((await bucket.list("_dropgpu/claims/")).objects)


def run_torture(
    server: SeaweedS3Server, bucket_name: str, work: Path, s: TortureSettings
) -> TortureReport:
    rng = random.Random(s.seed)
    report = TortureReport(settings=dict(s.__dict__))
    counter = work / "runs"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    config = _config(work / "dropgpu.toml", counter, s)
    direct = S3Bucket(bucket_name, endpoint_url=server.endpoint_url)

    async def drop() -> dict[str, bytes]:
        async with S3Bucket(bucket_name, endpoint_url=server.endpoint_url) as b:
            return await _drop_inputs(b, s.inputs, rng)

    inputs = asyncio.run(drop())
    rates = FaultRates.uniform(s.fault_rate, slow_s=0.5)
    t0 = time.monotonic()
    with FaultProxy(server.endpoint_url, rates, seed=s.seed) as proxy:
        args = [
            "watch",
            "--workers",
            str(s.workers),
            "--config",
            str(config),
            "--scratch-dir",
            str(work / "scratch"),
            "--bucket",
            f"s3://{bucket_name}",
            "--endpoint-url",
            proxy.endpoint_url,
        ]
        fleet = Watchers(args, logs)
        for i in range(s.watchers):
            fleet.start(i)

        async def progress() -> int:
            async with S3Bucket(bucket_name, endpoint_url=server.endpoint_url) as b:
                # Finished means archived too: an input still there is not done yet.
                left = len((await b.list(f"inputs/{ARCHIVE_ROUTE}/")).objects)
                return await _manifest_count(b) - left

        deadline = t0 + s.deadline_s
        chaos_until = t0 + s.chaos_s
        next_kill = t0 + rng.uniform(*s.kill_every_s)
        done = 0
        try:
            while time.monotonic() < deadline:
                now = time.monotonic()
                for i, proc in enumerate(fleet.procs):
                    if proc is None or proc.poll() is not None:
                        if proc is not None:
                            report.kills[f"watcher_exited_rc_{proc.returncode}"] += 1
                        fleet.start(i)
                        report.watcher_restarts += 1
                if now < chaos_until and now >= next_kill:
                    next_kill = now + rng.uniform(*s.kill_every_s)
                    i = rng.randrange(s.watchers)
                    proc = fleet.procs[i]
                    if rng.random() < s.group_kill_share and proc is not None:
                        fleet.kill_group(i)
                        report.kills["watcher_group"] += 1
                    elif proc is not None:
                        pids = worker_pids(proc.pid)
                        if pids:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(rng.choice(pids), signal.SIGKILL)
                            report.kills["worker"] += 1
                done = asyncio.run(progress())
                if done >= s.inputs and now >= chaos_until:
                    break
                time.sleep(0.3)
        finally:
            codes = fleet.stop_all()
            report.faults = proxy.injected()
        report.wall_s = time.monotonic() - t0
        report.kills["final_stop_exit_codes"] = sum(1 for c in codes if c == 0)
    for path in logs.iterdir():
        text = path.read_text(errors="replace")
        report.unexpected_errors += text.count("unexpected error") + text.count("Traceback")

    async def check() -> None:
        async with direct:
            await _check(direct, inputs, counter, report)

    asyncio.run(check())
    if done < s.inputs:
        report.violations.insert(0, f"only {done} of {s.inputs} manifests before the deadline")
    log.info("torture", **report.as_dict())
    return report


@pytest.mark.slow
def test_torture_many_watchers_kills_and_faults_lose_nothing(
    s3_server: SeaweedS3Server, s3_bucket_name: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("DROPGPU_TORTURE_SEED", uuid.uuid4().int % 10_000))
    settings = TortureSettings(seed=seed)
    report = run_torture(s3_server, s3_bucket_name, tmp_path, settings)
    summary = json.dumps(report.as_dict(), indent=1)
    assert report.violations == [], summary
    assert report.statuses == Counter(succeeded=settings.inputs), summary
    # The harness really did what it claims.
    assert report.kills["worker"] + report.kills["watcher_group"] >= 5, summary
    assert sum(v for k, v in report.faults.items() if k not in ("requests",)) >= 10, summary
    assert report.unexpected_errors == 0, summary
