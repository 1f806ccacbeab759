"""`dropgpu status` and `dropgpu retry`: job state from LISTs, and resetting one job.

Status only reads (watcher/state.py's snapshot). Retry checks here that the job
is finished; the reset itself is the claim protocol's (handlers/jobs/claims.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from handlers.contract.keys import DONE, JobRef, split_input_key
from handlers.jobs.claims import reset_job
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError
from watcher.config import Config
from watcher.state import DecisionState, classify, read_progress, take_snapshot


@dataclass(slots=True)
class RouteStatus:
    pending: int = 0
    running: int = 0
    retrying: int = 0
    succeeded: int = 0
    failed: int = 0
    ignored: int = 0
    running_jobs: list[dict[str, Any]] = field(default_factory=list)
    # Only with cost=True: sums over every finished job of the route (all versions).
    cost_usd: float | None = None
    gpu_seconds: float | None = None
    costed_jobs: int = 0


async def collect_status(
    bucket: Bucket, config: Config, *, progress: bool = True, cost: bool = False
) -> dict[str, RouteStatus]:
    """Counts per route from LISTs; GETs only for progress of running jobs and, with
    ``cost``, one GET per done marker (the marker holds the full manifest)."""
    snapshot = await take_snapshot(bucket, config, with_failed=True)
    ttl = config.watch.lease_ttl_seconds
    out: dict[str, RouteStatus] = {}
    running_claims: list[tuple[RouteStatus, str, str]] = []
    for route in config.enabled_routes():
        st = out.setdefault(route.name, RouteStatus())
        for obj in snapshot.inputs.get(route.name, []):
            d = classify(snapshot, route, obj, lease_ttl_seconds=ttl)
            if d.state == DecisionState.IGNORED:
                st.ignored += 1
            elif d.state in (DecisionState.DONE, DecisionState.REPAIR):
                if d.ref and d.ref.job_id in snapshot.failed:
                    st.failed += 1
                else:
                    st.succeeded += 1
            elif d.state == DecisionState.RUNNING:
                st.running += 1
                newest = d.claims.newest if d.claims else None
                if newest and newest.claim:
                    running_claims.append((st, obj.key, newest.claim.key))
            elif d.state == DecisionState.RETRY_WAIT:
                st.retrying += 1
            elif d.state in (
                DecisionState.SETTLING,
                DecisionState.CLAIMABLE,
                DecisionState.GIVE_UP,
            ):
                st.pending += 1
    if progress and running_claims:
        # Progress lives in claim bodies: GETs only for running jobs, only here.
        heartbeats = await read_progress(bucket, (key for _, _, key in running_claims))
        for (st, input_key, _), fields in zip(running_claims, heartbeats, strict=True):
            st.running_jobs.append({"key": input_key, **fields})
    if cost:
        await _add_costs(bucket, out, snapshot.done)
    return out


COST_GET_CONCURRENCY = 16


async def _add_costs(bucket: Bucket, out: dict[str, RouteStatus], done: set[str]) -> None:
    """Sum ``runtime.cost_usd`` / ``gpu_seconds`` of every done marker per route."""
    limit = asyncio.Semaphore(COST_GET_CONCURRENCY)

    async def runtime_of(job_id: str) -> dict[str, Any]:
        async with limit:
            try:
                data = json.loads(await bucket.get_bytes(f"{DONE}{job_id}"))
            except (BucketError, ValueError):
                return {}  # gone meanwhile (retry) or unreadable: not counted
        runtime = data.get("runtime") if isinstance(data, dict) else None
        return runtime if isinstance(runtime, dict) else {}

    # Job ids start with "<route>/", so a marker's route needs no GET.
    jobs = [(route, job_id) for job_id in done for route in out if job_id.startswith(f"{route}/")]
    runtimes = await asyncio.gather(*(runtime_of(job_id) for _, job_id in jobs))
    for st in out.values():
        st.cost_usd, st.gpu_seconds = 0.0, 0.0
    for (route, _), runtime in zip(jobs, runtimes, strict=True):
        st = out[route]
        if isinstance(runtime.get("cost_usd"), int | float):
            st.cost_usd = round((st.cost_usd or 0.0) + runtime["cost_usd"], 6)
            st.costed_jobs += 1
        if isinstance(runtime.get("gpu_seconds"), int | float):
            st.gpu_seconds = round((st.gpu_seconds or 0.0) + runtime["gpu_seconds"], 3)


def format_status(status: dict[str, RouteStatus]) -> str:
    columns = (("pending", 9), ("running", 9), ("retrying", 10), ("succeeded", 11), ("failed", 8))
    with_cost = any(st.cost_usd is not None for st in status.values())
    header = f"{'route':<14}" + "".join(f"{title:>{w}}" for title, w in columns)
    lines = [header + (f"{'gpu_s':>10}{'cost_usd':>11}" if with_cost else "")]
    for name, st in status.items():
        counts = (st.pending, st.running, st.retrying, st.succeeded, st.failed)
        cells = "".join(f"{n:>{w}}" for n, (_, w) in zip(counts, columns, strict=True))
        if with_cost:
            cells += f"{st.gpu_seconds or 0:>10.1f}{st.cost_usd or 0:>11.4f}"
        lines.append(f"{name:<14}{cells}")
        for job in st.running_jobs:
            pct = f"{100 * (job.get('progress') or 0):.0f}%"
            phase = job.get("phase") or "?"
            lines.append(f"  running {job['key']}  {phase} {pct}  attempt {job.get('attempt')}")
    if with_cost:
        total = sum(st.cost_usd or 0 for st in status.values())
        lines.append(f"estimated GPU cost, all routes: ${total:.4f} (prices: [pricing])")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RetryResult:
    key: str
    ok: bool
    message: str


async def retry_key(bucket: Bucket, config: Config, key: str) -> RetryResult:
    """Make a finished job run again by removing its done marker and claims."""
    if not key.startswith("inputs/"):
        key = f"inputs/{key}"
    parts = split_input_key(key)
    if parts is None or parts[0] not in config.routes:
        return RetryResult(key, False, "not under inputs/<route>/ of a configured route")
    listing = await bucket.list(key)
    obj = next((o for o in listing.objects if o.key == key), None)
    if obj is None:
        return RetryResult(key, False, "no such input in the bucket")
    ref = JobRef(parts[0], parts[1], obj.etag)
    done = await bucket.list(ref.done_key)
    if not any(o.key == ref.done_key for o in done.objects):
        return RetryResult(key, False, "not finished yet (pending, running or waiting to retry)")
    try:
        await reset_job(bucket, ref)
    except BucketError as exc:
        return RetryResult(key, False, f"storage error: {exc}")
    return RetryResult(key, True, "will run again on the next tick; its manifest is replaced then")
