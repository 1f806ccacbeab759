"""`dropgpu status` and `dropgpu retry`: job state from LISTs, and resetting one job.

Status only reads: watcher/state.py's snapshot, counted by the pure ``tally``, plus
one LIST of ``outputs/<route>/`` so that a finished job whose manifest is gone is
reported "missing" with `dropgpu retry` as its fix, never "succeeded". Retry checks
here that the job is finished; the reset itself is the claim protocol's
(handlers/jobs/claims.py).
"""

from __future__ import annotations

import asyncio
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from handlers.contract.keys import DONE, OUTPUTS, JobRef, split_input_key
from handlers.jobs.claims import reset_job
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError
from infra.text import one_line
from watcher.config import Config
from watcher.state import (
    Decision,
    DecisionState,
    Snapshot,
    classify,
    read_progress,
    take_snapshot,
)


@dataclass(slots=True)
class RouteStatus:
    pending: int = 0
    running: int = 0
    retrying: int = 0
    succeeded: int = 0
    failed: int = 0
    # Finished (a done marker), but its manifest.json is gone (outputs deleted by hand
    # or by a lifecycle rule): not counted as succeeded/failed; `dropgpu retry` reruns it.
    missing: int = 0
    # Entries under the route's prefix that can never be objects (folder bucket only).
    skipped: int = 0
    ignored: int = 0
    running_jobs: list[dict[str, Any]] = field(default_factory=list)
    missing_manifests: list[dict[str, str]] = field(default_factory=list)
    skipped_entries: list[dict[str, str]] = field(default_factory=list)
    # Only with cost=True: sums over every finished job of the route (all versions).
    cost_usd: float | None = None
    gpu_seconds: float | None = None
    costed_jobs: int = 0


@dataclass(slots=True)
class StatusTally:
    """What one snapshot says per route, and what status must still read to finish it."""

    routes: dict[str, RouteStatus]
    running_claims: list[tuple[str, str, str]]  # (route, input key, claim key): progress GETs
    finished: dict[str, list[JobRef]]  # route -> finished jobs whose manifest must exist


def tally(snapshot: Snapshot, config: Config) -> StatusTally:
    """Counts per route from one snapshot. Pure: no I/O."""
    ttl = config.watch.lease_ttl_seconds
    out = StatusTally({}, [], {})
    for route in config.enabled_routes():
        st = out.routes.setdefault(route.name, RouteStatus())
        for entry in snapshot.skipped.get(route.name, []):
            st.skipped += 1
            st.skipped_entries.append(
                {"name": shown(entry.name), "kind": entry.kind, "reason": one_line(entry.reason)}
            )
        for obj in snapshot.inputs.get(route.name, []):
            d = classify(snapshot, route, obj, lease_ttl_seconds=ttl)
            if d.state == DecisionState.IGNORED:
                st.ignored += 1
            elif d.state in (DecisionState.DONE, DecisionState.REPAIR):
                if d.ref and d.ref.job_id in snapshot.failed:
                    st.failed += 1
                else:
                    st.succeeded += 1
                if d.ref and _manifest_expected(snapshot, d):
                    out.finished.setdefault(route.name, []).append(d.ref)
            elif d.state == DecisionState.RUNNING:
                st.running += 1
                newest = d.claims.newest if d.claims else None
                if newest and newest.claim:
                    out.running_claims.append((route.name, obj.key, newest.claim.key))
            elif d.state == DecisionState.RETRY_WAIT:
                st.retrying += 1
            elif d.state in (
                DecisionState.SETTLING,
                DecisionState.CLAIMABLE,
                DecisionState.GIVE_UP,
            ):
                st.pending += 1
    return out


def shown(name: str) -> str:
    """A name as one printable line: odd characters escaped (the backend usually has)."""
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def _manifest_expected(snapshot: Snapshot, d: Decision) -> bool:
    """Whether this finished job's manifest.json must exist by now.

    Not while any claim is left: the commit writes the manifest before it deletes the
    claims, so a claim (live: committing now; stale: the tick's repair rewrites it)
    means the manifest may still be on its way. Nor when its key cannot fit (the
    result lives in the done marker only).
    """
    assert d.ref is not None
    claims = snapshot.claims.get(d.ref.job_id)
    return d.state == DecisionState.DONE and not claims and d.ref.manifest_key_fits()


def count_missing(tally: StatusTally, manifests: dict[str, set[str]], failed: set[str]) -> None:
    """Move finished jobs whose manifest is not in ``manifests`` (route -> listed keys
    under outputs/<route>/) from succeeded/failed to missing, naming the fix. Pure."""
    for route, refs in tally.finished.items():
        st = tally.routes[route]
        present = manifests.get(route, set())
        for ref in refs:
            if ref.manifest_key in present:
                continue
            if ref.job_id in failed:
                st.failed -= 1
            else:
                st.succeeded -= 1
            st.missing += 1
            st.missing_manifests.append(
                {
                    "key": ref.input_key,
                    "manifest_key": ref.manifest_key,
                    "fix": f"dropgpu retry {shlex.quote(ref.input_key)}",
                }
            )


async def collect_status(
    bucket: Bucket, config: Config, *, progress: bool = True, cost: bool = False
) -> dict[str, RouteStatus]:
    """Counts per route from LISTs; GETs only for progress of running jobs and, with
    ``cost``, one GET per done marker (the marker holds the full manifest).

    Besides the snapshot, one paginated LIST of ``outputs/<route>/`` per route with
    finished jobs (one request per 1,000 output objects) checks that their manifests
    are still there. It runs after the snapshot, so a job that had no claims left in
    it had written its manifest before this listing began.
    """
    snapshot = await take_snapshot(bucket, config, with_failed=True)
    out = tally(snapshot, config)
    routes = sorted(out.finished)
    listings = await asyncio.gather(*(bucket.list(f"{OUTPUTS}{r}/") for r in routes))
    manifests = {r: {o.key for o in lst.objects} for r, lst in zip(routes, listings, strict=True)}
    count_missing(out, manifests, snapshot.failed)
    if progress and out.running_claims:
        # Progress lives in claim bodies: GETs only for running jobs, only here.
        heartbeats = await read_progress(bucket, (key for _, _, key in out.running_claims))
        for (route, input_key, _), fields in zip(out.running_claims, heartbeats, strict=True):
            out.routes[route].running_jobs.append({"key": input_key, **fields})
    if cost:
        # Costs read every done marker (one GET each), so the marker listing is the
        # exact list of them: the index knows jobs finished since its last compaction
        # only by hash.
        listing = await bucket.list(DONE)
        await _add_costs(bucket, out.routes, {o.key[len(DONE) :] for o in listing.objects})
    return out.routes


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


COLUMNS = (
    ("pending", 9),
    ("running", 9),
    ("retrying", 10),
    ("succeeded", 11),
    ("failed", 8),
    ("missing", 9),
    ("skipped", 9),
)


def format_status(status: dict[str, RouteStatus]) -> str:
    with_cost = any(st.cost_usd is not None for st in status.values())
    header = f"{'route':<14}" + "".join(f"{title:>{w}}" for title, w in COLUMNS)
    lines = [header + (f"{'gpu_s':>10}{'cost_usd':>11}" if with_cost else "")]
    for name, st in status.items():
        cells = "".join(f"{getattr(st, title):>{w}}" for title, w in COLUMNS)
        if with_cost:
            cells += f"{st.gpu_seconds or 0:>10.1f}{st.cost_usd or 0:>11.4f}"
        lines.append(f"{name:<14}{cells}")
        for job in st.running_jobs:
            pct = f"{100 * (job.get('progress') or 0):.0f}%"
            phase = job.get("phase") or "?"
            lines.append(f"  running {job['key']}  {phase} {pct}  attempt {job.get('attempt')}")
        for gone in st.missing_manifests:
            lines.append(
                f"  missing {gone['key']}: finished, but {gone['manifest_key']} is gone; "
                f"run `{gone['fix']}`"
            )
        for entry in st.skipped_entries:
            lines.append(f"  skipped {entry['name']}: {entry['reason']}")
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
