"""`dropgpu status` and `dropgpu retry`: read and reset job state from LISTs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from handlers.layout import JobRef, split_input_key
from infra.bucket import Bucket
from infra.exceptions import BucketError
from watcher.config import Config
from watcher.state import (
    CLAIMABLE,
    DONE_STATE,
    GIVE_UP,
    IGNORED,
    REPAIR,
    RETRY_WAIT,
    RUNNING,
    SETTLING,
    classify,
    take_snapshot,
)


@dataclass(slots=True)
class RouteStatus:
    pending: int = 0
    running: int = 0
    retrying: int = 0
    succeeded: int = 0
    failed: int = 0
    ignored: int = 0
    running_jobs: list[dict[str, Any]] = field(default_factory=list)


async def collect_status(
    bucket: Bucket, config: Config, *, progress: bool = True
) -> dict[str, RouteStatus]:
    snapshot = await take_snapshot(bucket, config, with_failed=True)
    ttl = config.watch.lease_ttl_seconds
    out: dict[str, RouteStatus] = {}
    running_claims: list[tuple[RouteStatus, str, str]] = []
    for route in config.enabled_routes():
        st = out.setdefault(route.name, RouteStatus())
        for obj in snapshot.inputs.get(route.name, []):
            d = classify(snapshot, route, obj, lease_ttl_seconds=ttl)
            if d.state == IGNORED:
                st.ignored += 1
            elif d.state in (DONE_STATE, REPAIR):
                if d.ref and d.ref.job_id in snapshot.failed:
                    st.failed += 1
                else:
                    st.succeeded += 1
            elif d.state == RUNNING:
                st.running += 1
                newest = d.claims.newest if d.claims else None
                if newest and newest.claim:
                    running_claims.append((st, obj.key, newest.claim.key))
            elif d.state == RETRY_WAIT:
                st.retrying += 1
            elif d.state in (SETTLING, CLAIMABLE, GIVE_UP):
                st.pending += 1
    if progress and running_claims:
        # Progress lives in claim bodies: GETs only for running jobs, only here.
        bodies = await asyncio.gather(
            *(bucket.get_bytes(key) for _, _, key in running_claims), return_exceptions=True
        )
        for (st, input_key, _), body in zip(running_claims, bodies, strict=True):
            info: dict[str, Any] = {"key": input_key}
            if isinstance(body, bytes):
                try:
                    data = json.loads(body)
                    info.update(
                        {
                            k: data.get(k)
                            for k in ("phase", "progress", "attempt", "owner", "updated_at")
                        }
                    )
                except ValueError:
                    pass
            st.running_jobs.append(info)
    return out


def format_status(status: dict[str, RouteStatus]) -> str:
    columns = (("pending", 9), ("running", 9), ("retrying", 10), ("succeeded", 11), ("failed", 8))
    lines = [f"{'route':<14}" + "".join(f"{title:>{w}}" for title, w in columns)]
    for name, st in status.items():
        counts = (st.pending, st.running, st.retrying, st.succeeded, st.failed)
        cells = "".join(f"{n:>{w}}" for n, (_, w) in zip(counts, columns, strict=True))
        lines.append(f"{name:<14}{cells}")
        for job in st.running_jobs:
            pct = f"{100 * (job.get('progress') or 0):.0f}%"
            phase = job.get("phase") or "?"
            lines.append(f"  running {job['key']}  {phase} {pct}  attempt {job.get('attempt')}")
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
        claims = await bucket.list(ref.claims_prefix)
        for o in claims.objects:
            await bucket.delete(o.key)
        await bucket.delete(ref.failed_index_key)
        # The done marker goes last: until it is gone, no watcher starts the job.
        await bucket.delete(ref.done_key)
    except BucketError as exc:
        return RetryResult(key, False, f"storage error: {exc}")
    return RetryResult(key, True, "will run again on the next tick; its manifest is replaced then")
