"""One tick (DESIGN §4): snapshot, decide, claim with create-if-absent, dispatch.

Ticks may overlap and several watchers may share a bucket: a claim is only ever
won by creating the next attempt object, so at most one watcher runs each
attempt, whatever the others do.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.contract.keys import JobRef
from handlers.contract.manifest import iso, utc_now
from handlers.jobs.after_success import apply_after_success
from handlers.jobs.claims import create_claim
from handlers.jobs.commit import commit, repair
from handlers.jobs.manifests import gave_up_manifest
from handlers.jobs.spec import JobSpec, RetryPolicy, job_log_context
from infra.storage.bucket import Bucket, ObjectInfo
from infra.storage.errors import BucketError, ObjectNotFound
from watcher.config import Config, RouteConfig
from watcher.index_upkeep import maintain_index
from watcher.state import (
    Decision,
    DecisionState,
    Snapshot,
    classify,
    last_error,
    take_snapshot,
    warn_skipped_once,
)

log: FilteringBoundLogger = structlog.get_logger(__name__)

Dispatch = Callable[[JobSpec], Awaitable[None] | None]
CLAIM_CONCURRENCY = 16
# Inputs a tick deletes/archives for workers that could not (each costs ~4 requests).
MAX_AFTER_SUCCESS_PER_TICK = 64


@dataclass(frozen=True, slots=True)
class IndexMiss:
    """A claimable-looking job that has a done marker: the index will learn it."""

    decision: Decision
    failed: bool


@dataclass(slots=True)
class TickReport:
    claimed: list[JobSpec] = field(default_factory=list)
    states: Counter[DecisionState] = field(default_factory=Counter)
    lost_races: int = 0
    gave_up: int = 0
    repaired: int = 0
    deferred: int = 0  # claimable, but over this tick's cap
    index_misses: int = 0  # done jobs the done index did not know (caught by a GET)
    index_generations: int = 0  # new done index generations this watcher wrote
    collected: int = 0  # job versions (and orphan claims) whose state was collected
    # after_success carried out by the tick (a worker died before it could): outcome -> n
    after_success: Counter[str] = field(default_factory=Counter)
    # Seconds until the soonest settling input / scheduled retry becomes claimable.
    next_settle_s: float | None = None
    next_retry_s: float | None = None
    list_requests: int = 0

    def summary(self) -> dict[str, object]:
        return {
            "claimed": len(self.claimed),
            "lost_races": self.lost_races,
            "gave_up": self.gave_up,
            "repaired": self.repaired,
            "deferred": self.deferred,
            "index_misses": self.index_misses,
            "index_generations": self.index_generations,
            "collected": self.collected,
            **{f"after_success_{k}": v for k, v in sorted(self.after_success.items())},
            **{f"n_{k}": v for k, v in sorted(self.states.items())},
            "list_requests": self.list_requests,
        }


def make_job_spec(
    config: Config, route: RouteConfig, ref: JobRef, obj: ObjectInfo, attempt: int, claimed_at: str
) -> JobSpec:
    settings = config.watch
    return JobSpec(
        route=route.name,
        rel=ref.rel,
        etag=ref.etag,
        size=obj.size,
        last_modified=iso(obj.last_modified) or "",
        attempt=attempt,
        claimed_at=claimed_at,
        handler=route.handler,
        params=dict(route.params),
        extensions=tuple(sorted(route.accepted_extensions())),
        timeout_seconds=route.timeout_seconds,
        lease_ttl_seconds=settings.lease_ttl_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        notify_url=route.notify_url,
        sources_wait_seconds=route.sources_wait_seconds,
        source_prefixes=route.source_prefixes,
        after_success=route.after_success,
        archive_prefix=route.archive_prefix,
        retry=RetryPolicy(
            max_attempts=route.max_attempts,
            backoff_base_seconds=settings.backoff_base_seconds,
            backoff_max_seconds=settings.backoff_max_seconds,
        ),
    )


async def _done_marker(bucket: Bucket, ref: JobRef) -> dict[str, object] | None:
    """The job's done marker (its manifest), or None when it has none. One GET."""
    try:
        body = await bucket.get_bytes(ref.done_key)
    except ObjectNotFound:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


async def _try_claim(
    bucket: Bucket, config: Config, route: RouteConfig, d: Decision, snapshot: Snapshot
) -> JobSpec | IndexMiss | None:
    assert d.ref is not None and d.obj is not None
    if not snapshot.done.exhaustive:
        # The done index is not the fence: a job it (and the feed) missed has a done
        # marker. One GET per claimable job, so a miss costs a request, never a rerun.
        marker = await _done_marker(bucket, d.ref)
        if marker is not None:
            return IndexMiss(d, failed=marker.get("status") == "failed")
    claimed_at = iso(utc_now()) or ""
    spec = make_job_spec(config, route, d.ref, d.obj, d.next_attempt, claimed_at)
    if await create_claim(bucket, d.ref, d.next_attempt, claimed_at=claimed_at):
        return spec
    return None


async def _give_up(bucket: Bucket, config: Config, route: RouteConfig, d: Decision) -> bool:
    assert d.ref is not None and d.obj is not None
    spec = make_job_spec(config, route, d.ref, d.obj, d.next_attempt, iso(utc_now()) or "")
    message = await last_error(bucket, d)
    used = d.claims.attempts_used if d.claims else d.next_attempt
    manifest = gave_up_manifest(spec, used, message, device=None, worker="watcher")
    # Consumers hear about give-ups too; the caller drains pending deliveries.
    won = await commit(
        bucket, d.ref, manifest.to_json_bytes(), failed=True, notify_url=route.notify_url
    )
    if not won:
        # A done marker exists that the done index did not know: an interrupted
        # commit. Finish it, or every tick would try to give the job up again.
        await repair(bucket, d.ref)
    return won


def _moves_inputs(snapshot: Snapshot, route: RouteConfig, d: Decision) -> bool:
    """A done input the route deletes or archives, known to have succeeded.

    Only the done index knows success without a GET (the feed part of the view
    does not say); a job finished since the last compaction waits for the next one.
    """
    if route.after_success == "keep" or d.ref is None:
        return False
    rd = snapshot.done_routes.get(route.name)
    index = rd.index if rd is not None else None
    job_id = d.ref.job_id
    return index is not None and job_id in index.done and job_id not in index.failed


def _soonest(current: float | None, wait: float) -> float:
    wait = max(0.0, wait)
    return wait if current is None else min(current, wait)


async def run_tick(
    bucket: Bucket,
    config: Config,
    dispatch: Dispatch,
    *,
    capacity: int | None = None,
    snapshot: Snapshot | None = None,
    dispatched: Collection[str] = frozenset(),
    start_deadline_seconds: float = 0.0,
) -> TickReport:
    """List, decide, claim up to min(cap, capacity) jobs and hand each to ``dispatch``.

    ``snapshot``: one taken by the caller this tick (reused across routes, not retaken);
    ``dispatched``/``start_deadline_seconds``: see watcher/state.py ``dispatched_jobs``.
    """
    report = TickReport()
    if snapshot is None:
        snapshot = await take_snapshot(bucket, config)
    warn_skipped_once(snapshot)
    report.list_requests = snapshot.requests
    ttl = config.watch.lease_ttl_seconds
    claimable: list[tuple[RouteConfig, Decision]] = []
    maintenance: list[tuple[RouteConfig, Decision]] = []
    # Succeeded inputs still there on a route that deletes or archives them.
    leftovers: list[tuple[RouteConfig, Decision]] = []
    for route in config.enabled_routes():
        for obj in snapshot.inputs.get(route.name, []):
            d = classify(
                snapshot,
                route,
                obj,
                lease_ttl_seconds=ttl,
                dispatched=dispatched,
                start_deadline_seconds=start_deadline_seconds,
            )
            report.states[d.state] += 1
            if d.state == DecisionState.CLAIMABLE:
                claimable.append((route, d))
            elif d.state in (DecisionState.GIVE_UP, DecisionState.REPAIR):
                maintenance.append((route, d))
            elif d.state == DecisionState.DONE and _moves_inputs(snapshot, route, d):
                leftovers.append((route, d))
            elif d.state == DecisionState.SETTLING:
                report.next_settle_s = _soonest(report.next_settle_s, d.wait_s)
            elif d.state == DecisionState.RETRY_WAIT:
                report.next_retry_s = _soonest(report.next_retry_s, d.wait_s)

    for route, d in maintenance:
        assert d.ref is not None
        # The commit's (and a give-up webhook's) lines carry the job, as in the runner.
        with structlog.contextvars.bound_contextvars(**job_log_context(d.ref)):
            try:
                if d.state == DecisionState.REPAIR:
                    await repair(bucket, d.ref)
                    report.repaired += 1
                    log.warning("commit_repaired")
                elif await _give_up(bucket, config, route, d):
                    report.gave_up += 1
                    log.warning("gave_up", attempts=d.next_attempt)
            except BucketError as exc:  # the next tick sees the same state and retries
                log.warning("maintenance_failed", error=str(exc))

    for route, d in leftovers[:MAX_AFTER_SUCCESS_PER_TICK]:
        assert d.ref is not None
        with structlog.contextvars.bound_contextvars(**job_log_context(d.ref)):
            outcome = await apply_after_success(
                bucket, d.ref, route.after_success, route.archive_prefix
            )
            report.after_success[outcome] += 1

    misses: dict[str, dict[str, bool]] = {}  # route -> done job id -> failed
    # Oldest first: a burst of new drops does not starve earlier ones.
    claimable.sort(key=lambda rd: rd[1].obj.last_modified)  # type: ignore[union-attr]
    limit = (
        config.watch.max_claims_per_tick
        if capacity is None
        else min(config.watch.max_claims_per_tick, capacity)
    )
    queue = list(claimable)
    while queue and len(report.claimed) < limit:
        batch, queue = (
            queue[: min(CLAIM_CONCURRENCY, limit - len(report.claimed))],
            queue[min(CLAIM_CONCURRENCY, limit - len(report.claimed)) :],
        )
        results = await asyncio.gather(
            *(_try_claim(bucket, config, r, d, snapshot) for r, d in batch),
            return_exceptions=True,
        )
        for (_route, d), res in zip(batch, results, strict=True):
            assert d.ref is not None
            # Dispatch runs in this context too: a failed spawn's release names the job.
            with structlog.contextvars.bound_contextvars(
                **job_log_context(d.ref, attempt=d.next_attempt)
            ):
                if isinstance(res, BaseException):
                    log.warning("claim_failed", error=str(res))
                elif isinstance(res, IndexMiss):
                    report.index_misses += 1
                    report.states[DecisionState.CLAIMABLE] -= 1  # it is done after all
                    report.states[DecisionState.DONE] += 1
                    misses.setdefault(d.ref.route, {})[d.ref.job_id] = res.failed
                    report.repaired += await _after_index_miss(bucket, d)
                elif res is None:
                    report.lost_races += 1
                else:
                    report.claimed.append(res)
                    log.info("claimed")
                    maybe = dispatch(res)
                    if maybe is not None:
                        await maybe
    report.deferred = len(queue)
    if not snapshot.done.exhaustive or snapshot.done_routes:
        await maintain_index(bucket, config, snapshot, misses, report)
    return report


async def _after_index_miss(bucket: Bucket, d: Decision) -> int:
    """A done job the index missed: finish its commit if its claims were left behind.

    Returns 1 when a commit was repaired.
    """
    assert d.ref is not None
    if d.claims is None or not d.claims.claim_objects():
        log.info("done_index_missed_job")
        return 0
    try:
        await repair(bucket, d.ref)
    except BucketError as exc:  # the next tick sees the same state and retries
        log.warning("maintenance_failed", error=str(exc))
        return 0
    log.warning("commit_repaired")
    return 1
