"""Throughput of trivial jobs: claim-ahead vs capacity-limited claiming (issue 11, point 16).

N tiny inputs in a folder bucket, a trivial handler (tests/handlers_for_tests.py
CountingHandler: copies the input, counts its own executions), `watch --once`
with W workers. Each strategy gets a fresh bucket with the same inputs:

- ``capacity_limited``: the old claiming rule, reproduced with this code
  (``LocalWorkerPool(queue_limit=0)``): a tick claims one job per idle worker;
- ``claim_ahead``: the default (a bounded, heartbeaten local queue);
- ``old_code`` (with ``--baseline-ref REF``): the CLI of an older commit, e.g. the
  one before claim-ahead, extracted with ``git archive``: the real "before".

jobs/s is N over the span from the first job's start to the last job's finish
(from the manifests: process start-up is not counted); every input must have
exactly one succeeded manifest and one handler execution. A profile of one job
in this process (its storage requests and where its time goes) and of one tick
comes with it.

    python bench/bench_throughput.py [--jobs 1000] [--workers 2] [--baseline-ref REF]
        [--out bench/results/throughput.json]

Target: >= 30 trivial jobs/s with 2 workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpu.device import DeviceInfo  # noqa: E402
from handlers.contract.manifest import validate_manifest  # noqa: E402
from handlers.jobs.runner import JobRunner  # noqa: E402
from handlers.jobs.spec import JobSpec  # noqa: E402
from infra.log import configure_logging  # noqa: E402
from infra.storage.local import LocalFolderBucket  # noqa: E402
from tests.handlers_for_tests import executions  # noqa: E402
from tests.pipeline_helpers import COUNTING  # noqa: E402
from watcher.config import load_config  # noqa: E402
from watcher.local.loop import StopSignal, watch  # noqa: E402
from watcher.local.pool import LocalWorkerPool, WorkerOptions  # noqa: E402
from watcher.tick import run_tick  # noqa: E402

ROUTE = "count"


def _body(i: int) -> bytes:
    return f"bench input {i}".encode()


def _builtin_routes(tree: Path | None) -> list[str]:
    """The built-in route names of this code, or of an older tree (it may know fewer)."""
    if tree is None:
        return list(load_config(None).routes)
    code = "from watcher.config import load_config; print(' '.join(load_config(None).routes))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def _write_config(path: Path, counter: Path, tree: Path | None = None) -> Path:
    # Only the bench route: the built-in ones would add empty LISTs to every tick.
    lines = [f"[routes.{name}]\nenabled = false\n" for name in _builtin_routes(tree)]
    lines.append(
        f'[routes.{ROUTE}]\nhandler = "{COUNTING}"\nsettle_seconds = 0\n'
        f'params = {{ counter_dir = "{counter}" }}\n'
    )
    path.write_text("\n".join(lines))
    return path


def _populate(root: Path, n: int) -> None:
    folder = root / "inputs" / ROUTE / "bench"
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:05d}.bin").write_bytes(_body(i))


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _measure(root: Path, counter: Path, n: int, wall_s: float) -> dict[str, Any]:
    manifests = sorted((root / "outputs" / ROUTE / "bench").glob("*.bin/manifest.json"))
    docs = [json.loads(p.read_bytes()) for p in manifests]
    starts = [_ts(d["timings"]["started_at"]) for d in docs]
    ends = [_ts(d["timings"]["finished_at"]) for d in docs]
    span = max(ends) - min(starts) if docs else float("nan")
    once = len(docs) == n and all(d["status"] == "succeeded" for d in docs)
    once = once and all(executions(counter, _body(i)) == 1 for i in range(n))
    return {
        "jobs": len(docs),
        "span_s": round(span, 2),
        "jobs_per_s": round(len(docs) / span, 1) if docs else 0.0,
        "wall_s": round(wall_s, 2),
        "exactly_once": once,
    }


async def _run_here(root: Path, config_path: Path, workers: int, queue_limit: int | None) -> float:
    config = load_config(config_path)
    options = WorkerOptions(bucket=str(root), endpoint_url=None, scratch_root=str(root / ".s"))
    async with LocalFolderBucket(root) as bucket:
        pool = LocalWorkerPool(workers, options, queue_limit=queue_limit)
        t0 = time.perf_counter()
        pool.start()
        try:
            await watch(
                bucket,
                config,
                pool,
                once=True,
                interval=config.watch.interval_seconds,
                stop=StopSignal(),
            )
        finally:
            pool.stop(kill=True, timeout=1)
        return time.perf_counter() - t0


def _run_old(tree: Path, root: Path, config_path: Path, workers: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "DROPGPU_LOG_LEVEL": "WARNING"}
    args = ["watch", "--once", "--workers", str(workers), "--bucket", str(root)]
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "watcher.cli", *args, "--config", str(config_path)],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def _strategy(
    tmp: Path, name: str, n: int, workers: int, *, queue_limit: int | None, tree: Path | None
) -> dict[str, Any]:
    work = tmp / name
    root, counter = work / "bucket", work / "runs"
    _populate(root, n)
    config_path = _write_config(work / "dropgpu.toml", counter, tree)
    if tree is not None:
        wall = _run_old(tree, root, config_path, workers)
    else:
        wall = asyncio.run(_run_here(root, config_path, workers, queue_limit))
    row = {"strategy": name, **_measure(root, counter, n, wall)}
    print(json.dumps(row), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return row


async def _profile(tmp: Path, n: int) -> dict[str, Any]:
    """One trivial job in this process (no IPC, no contention) and one tick, among n inputs."""
    root, counter = tmp / "profile" / "bucket", tmp / "profile" / "runs"
    _populate(root, n)
    config = load_config(_write_config(tmp / "profile" / "dropgpu.toml", counter))
    async with LocalFolderBucket(root) as bucket:
        claimed: list[JobSpec] = []
        t0 = time.perf_counter()
        await run_tick(bucket, config, claimed.append, capacity=2)
        tick_claim_2 = time.perf_counter() - t0
        t0 = time.perf_counter()
        await run_tick(bucket, config, claimed.append, capacity=16)
        tick_claim_16 = time.perf_counter() - t0
        runner = JobRunner(
            bucket, scratch_root=tmp / "profile" / "s", device=DeviceInfo("cpu"), worker_name="p"
        )
        job_ms: list[float] = []
        requests: list[dict[str, int]] = []
        for spec in claimed:
            bucket.stats.counts.clear()
            t0 = time.perf_counter()
            await runner.run(spec)
            job_ms.append((time.perf_counter() - t0) * 1000)
            requests.append(dict(bucket.stats.counts))
        manifest = next((root / "outputs").rglob("manifest.json")).read_bytes()
        t0 = time.perf_counter()
        for _ in range(5):
            validate_manifest(manifest)
        validate_ms = (time.perf_counter() - t0) / 5 * 1000
    shutil.rmtree(tmp / "profile", ignore_errors=True)
    per_job = requests[-1] if requests else {}
    return {
        "inputs_listed": n,
        "tick_ms_claiming_2": round(tick_claim_2 * 1000, 1),
        "tick_ms_claiming_16": round(tick_claim_16 * 1000, 1),
        "job_ms_in_process_median": round(statistics.median(job_ms), 1),
        "storage_requests_per_job": per_job,
        "storage_requests_per_job_total": sum(per_job.values()),
        "manifest_schema_validation_ms": round(validate_ms, 1),
    }


def _extract(ref: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--baseline-ref", default=None, help="also time this commit's CLI (e.g. the one before)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/throughput.json")
    args = parser.parse_args()
    configure_logging(level="WARNING")
    os.environ["DROPGPU_LOG_LEVEL"] = "WARNING"  # the workers log as this process does
    rows: dict[str, dict[str, Any]] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        profile = asyncio.run(_profile(tmp, args.jobs))
        print(json.dumps({"profile": profile}), flush=True)
        if args.baseline_ref:
            tree = _extract(args.baseline_ref, tmp / "old-tree")
            old = _strategy(tmp, "old_code", args.jobs, args.workers, queue_limit=None, tree=tree)
            rows["old_code"] = {**old, "ref": args.baseline_ref}
        rows["capacity_limited"] = _strategy(
            tmp, "capacity_limited", args.jobs, args.workers, queue_limit=0, tree=None
        )
        rows["claim_ahead"] = _strategy(
            tmp, "claim_ahead", args.jobs, args.workers, queue_limit=None, tree=None
        )
    new = rows["claim_ahead"]["jobs_per_s"]
    ratios = {
        f"claim_ahead_over_{name}": round(new / row["jobs_per_s"], 2)
        for name, row in rows.items()
        if name != "claim_ahead" and row["jobs_per_s"]
    }
    print(json.dumps(ratios))
    report = {
        "benchmark": "trivial_job_throughput",
        "store": "folder bucket (local disk)",
        "jobs": args.jobs,
        "workers": args.workers,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": "a shared 2-core machine: other sessions ran meanwhile, so the figures are noisy",
        "target_jobs_per_s": 30,
        "strategies": rows,
        "ratios": ratios,
        "profile": profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
