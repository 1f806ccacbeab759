"""What the bucket says about every job, from LISTs alone (DESIGN §4.1-2).

One snapshot = one LIST of _dropgpu/claims/, then in parallel: each route's
inputs (sub-prefixes listed concurrently, ``Bucket.list_tree``) and what finished:
the done index plus the feed since it (watcher/done_index.py; one LIST each and a
GET of a new index generation), or with ``done_index = false`` every done marker.
No per-object HEAD or GET: every fact the tick needs to decide is in key names and
LastModified.

This is the one reader of the claim protocol (its writer: handlers/jobs/claims.py).
``take_snapshot`` does the listing; ``build_snapshot`` and ``classify`` are pure.
Two claim *bodies* are read on demand, here too: the last failure record when
the tick gives a job up (``last_error``) and running jobs' heartbeats for
``dropgpu status`` (``read_progress``). What a folder bucket could not list as
objects (``Listing.skipped``) travels in the snapshot per route; ``warn_skipped_once``
logs each entry once per process.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.contract.keys import CLAIMS, DONE, FAILED, ClaimKind, JobRef, parse_claim_key
from handlers.jobs.claims import DISPATCHED_PHASE
from infra.storage.bucket import Bucket, Listing, ObjectInfo, SkippedEntry
from infra.storage.errors import BucketError
from watcher.config import Config, RouteConfig
from watcher.done_index import DoneReading, DoneView, RouteDone, read_done
from watcher.ignore import ignore_reason

log: FilteringBoundLogger = structlog.get_logger(__name__)


@dataclass(slots=True)
class AttemptState:
    number: int
    claim: ObjectInfo | None = None
    failed_retry_at_ms: int | None = None
    failure_key: str | None = None
    released: bool = False


@dataclass(slots=True)
class JobClaims:
    attempts: dict[int, AttemptState] = field(default_factory=dict)
    # `dropgpu retry` asked for a new run: the done index's "done" no longer counts.
    reset: ObjectInfo | None = None

    def attempt(self, n: int) -> AttemptState:
        return self.attempts.setdefault(n, AttemptState(n))

    @property
    def newest(self) -> AttemptState | None:
        return self.attempts[max(self.attempts)] if self.attempts else None

    @property
    def attempts_used(self) -> int:
        # A released attempt (Ctrl-C) did not fail; it does not use up a try.
        return sum(1 for a in self.attempts.values() if not a.released)

    def claim_objects(self) -> list[ObjectInfo]:
        return [a.claim for a in self.attempts.values() if a.claim is not None]


@dataclass(slots=True)
class Snapshot:
    server_time: datetime
    inputs: dict[str, list[ObjectInfo]]  # route name -> listed objects
    done: DoneView  # ``job_id in done``: finished (watcher/done_index.py)
    failed: set[str]  # job ids whose final manifest is a failure
    claims: dict[str, JobClaims]  # job id -> attempts
    requests: int
    # Route name -> entries under its prefix that can never be objects (a folder bucket's
    # odd names, symlinks, FIFOs, unreadable folders); never jobs, shown by status.
    skipped: dict[str, list[SkippedEntry]] = field(default_factory=dict)
    # Route name -> what its done index said (empty when done markers were listed).
    done_routes: dict[str, RouteDone] = field(default_factory=dict)
    # Job id -> its claim-family objects as listed (for state collection).
    claim_objects: dict[str, list[ObjectInfo]] = field(default_factory=dict)


async def take_snapshot(bucket: Bucket, config: Config, *, with_failed: bool = False) -> Snapshot:
    routes = config.enabled_routes()
    settings = config.watch
    # Claims are listed BEFORE done markers (or the done index and the feed), never
    # concurrently: a commit creates the done marker, writes its feed record and then
    # deletes the claims, so a job whose claims are gone from this listing is already
    # done in the next read. In parallel, a commit landing between the two reads made
    # a finished job look new (no marker, no claim) and it was claimed and run again
    # (fenced, but the handler ran twice).
    claims_listing = await bucket.list(CLAIMS)

    async def finished() -> tuple[DoneReading | None, Listing | None]:
        if settings.done_index:
            return await read_done(bucket, [r.name for r in routes]), None
        return None, await bucket.list(DONE)

    async def failed_markers() -> Listing | None:
        return await bucket.list(FAILED) if with_failed else None

    inputs, (reading, done_listing), failed = await asyncio.gather(
        asyncio.gather(
            *(bucket.list_tree(r.prefix, concurrency=settings.list_concurrency) for r in routes)
        ),
        finished(),
        failed_markers(),
    )
    return build_snapshot(
        {r.name: listing for r, listing in zip(routes, inputs, strict=True)},
        done=done_listing,
        claims=claims_listing,
        failed=failed,
        reading=reading,
    )


def build_snapshot(
    inputs: Mapping[str, Listing],
    *,
    done: Listing | None,
    claims: Listing,
    failed: Listing | None = None,
    reading: DoneReading | None = None,
) -> Snapshot:
    """The snapshot these listings describe: route name -> its input listing, and the
    listings of _dropgpu/done/ (or, with the done index, ``reading``), _dropgpu/claims/
    and (for status) _dropgpu/failed/.

    Pure: no I/O, so every state can be built from ObjectInfo lists in a test.
    """
    listings = [*inputs.values(), claims, *(x for x in (done, failed) if x is not None)]
    times = [listing.server_time for listing in listings]
    requests = sum(listing.requests for listing in listings)
    if reading is not None:
        view, times, requests = (
            reading.view,
            times + reading.server_times,
            requests + reading.requests,
        )
    else:
        assert done is not None, "either a done listing or a done index reading"
        view = DoneView(listed={o.key[len(DONE) :] for o in done.objects}, exhaustive=True)
    by_job: dict[str, list[ObjectInfo]] = defaultdict(list)
    for obj in claims.objects:
        if (parsed := parse_claim_key(obj.key)) is not None:
            by_job[parsed.job_id].append(obj)
    return Snapshot(
        # The oldest server clock reading is the safe one for "is it stale yet".
        server_time=min(times),
        inputs={name: listing.objects for name, listing in inputs.items()},
        done=view,
        failed={o.key[len(FAILED) :] for o in failed.objects} if failed is not None else set(),
        claims=parse_claims(claims.objects),
        requests=requests,
        skipped={name: list(listing.skipped) for name, listing in inputs.items()},
        done_routes=reading.routes if reading is not None else {},
        claim_objects=dict(by_job),
    )


# Each skipped entry is logged once per process, not on every tick: (name, reason) seen.
_warned_skipped: set[tuple[str, str]] = set()


def warn_skipped_once(snapshot: Snapshot) -> int:
    """Log a warning for each skipped entry this process has not warned about; how many.

    The entry stays visible in ``dropgpu status`` for as long as it is there.
    """
    new = 0
    for route, entries in snapshot.skipped.items():
        for entry in entries:
            if (entry.name, entry.reason) in _warned_skipped:
                continue
            _warned_skipped.add((entry.name, entry.reason))
            new += 1
            log.warning(
                "input_skipped", route=route, name=entry.name, kind=entry.kind, reason=entry.reason
            )
    return new


def parse_claims(objects: Iterable[ObjectInfo]) -> dict[str, JobClaims]:
    """Job id -> its attempts, from a listing of _dropgpu/claims/ (foreign keys skipped)."""
    claims: dict[str, JobClaims] = defaultdict(JobClaims)
    for obj in objects:
        parsed = parse_claim_key(obj.key)
        if parsed is None:
            continue
        if parsed.kind == ClaimKind.RESET:
            claims[parsed.job_id].reset = obj
            continue
        state = claims[parsed.job_id].attempt(parsed.attempt)
        if parsed.kind == ClaimKind.CLAIM:
            state.claim = obj
        elif parsed.kind == ClaimKind.FAILED:
            state.failed_retry_at_ms = parsed.retry_at_ms
            state.failure_key = obj.key
        else:
            state.released = True
    return dict(claims)


# -- classification -------------------------------------------------------------------


class DecisionState(StrEnum):
    """What the tick should do about one listed input (the values name status counts)."""

    IGNORED = "ignored"  # never a job: folder markers, OS litter, sync temporaries (ignore.py)
    DONE = "done"  # committed (a done marker exists)
    REPAIR = "repair"  # committed, but the committer died before cleaning up its claims
    SETTLING = "settling"  # too new: the upload may still be changing
    RUNNING = "running"  # the newest claim is live (heartbeat younger than the lease TTL)
    RETRY_WAIT = "retry_wait"  # the newest attempt failed; its retry time is not reached yet
    CLAIMABLE = "claimable"  # new, retry due, released, or its owner stopped heartbeating
    GIVE_UP = "give_up"  # like claimable, but every attempt is used up: commit "gave_up"


@dataclass(frozen=True, slots=True)
class Decision:
    state: DecisionState
    ref: JobRef | None = None
    obj: ObjectInfo | None = None
    next_attempt: int = 0
    wait_s: float = 0.0  # for SETTLING / RETRY_WAIT: seconds until actionable
    detail: str = ""
    claims: JobClaims | None = None


def is_done(snapshot: Snapshot, job_id: str, job_claims: JobClaims | None) -> bool:
    """Finished, unless `dropgpu retry` reset it since the done index was written."""
    if job_claims is not None and job_claims.reset is not None:
        return snapshot.done.listed_as_done(job_id)
    return job_id in snapshot.done


def _age_s(snapshot: Snapshot, obj: ObjectInfo) -> float:
    return (snapshot.server_time - obj.last_modified).total_seconds()


def classify(
    snapshot: Snapshot,
    route: RouteConfig,
    obj: ObjectInfo,
    *,
    lease_ttl_seconds: float,
    dispatched: Collection[str] = frozenset(),
    start_deadline_seconds: float = 0.0,
) -> Decision:
    rel = obj.key[len(route.prefix) :]
    why = ignore_reason(rel)
    if why:
        return Decision(DecisionState.IGNORED, obj=obj, detail=why)
    ref = JobRef(route.name, rel, obj.etag)
    job_claims = snapshot.claims.get(ref.job_id)
    if is_done(snapshot, ref.job_id, job_claims):
        live = job_claims.claim_objects() if job_claims else []
        if live and all(_age_s(snapshot, c) > lease_ttl_seconds for c in live):
            return Decision(DecisionState.REPAIR, ref, obj, claims=job_claims)
        return Decision(DecisionState.DONE, ref, obj)
    age = _age_s(snapshot, obj)
    if age < route.settle_seconds:
        return Decision(DecisionState.SETTLING, ref, obj, wait_s=route.settle_seconds - age)
    newest = job_claims.newest if job_claims else None
    if newest is None:
        return Decision(DecisionState.CLAIMABLE, ref, obj, next_attempt=1, claims=job_claims)
    used = job_claims.attempts_used if job_claims else 0
    next_attempt = newest.number + 1
    now_ms = snapshot.server_time.timestamp() * 1000
    if newest.released:
        # Released with a retry time: a job file waiting for its sources (the runner's
        # defer_claim). No try used; not claimed again before that time.
        if newest.failed_retry_at_ms is not None and now_ms < newest.failed_retry_at_ms:
            wait = (newest.failed_retry_at_ms - now_ms) / 1000
            return Decision(
                DecisionState.RETRY_WAIT,
                ref,
                obj,
                next_attempt,
                wait_s=wait,
                detail="waiting for sources",
                claims=job_claims,
            )
        return Decision(
            DecisionState.CLAIMABLE, ref, obj, next_attempt=next_attempt, claims=job_claims
        )
    if newest.failed_retry_at_ms is not None:
        if now_ms < newest.failed_retry_at_ms:
            wait = (newest.failed_retry_at_ms - now_ms) / 1000
            return Decision(
                DecisionState.RETRY_WAIT, ref, obj, next_attempt, wait_s=wait, claims=job_claims
            )
    elif newest.claim is not None and _age_s(snapshot, newest.claim) <= lease_ttl_seconds:
        return Decision(DecisionState.RUNNING, ref, obj, claims=job_claims)
    elif newest.claim is not None and _still_dispatched(
        snapshot, ref.job_id, newest.claim, dispatched, start_deadline_seconds
    ):
        return Decision(DecisionState.RUNNING, ref, obj, detail="dispatched", claims=job_claims)
    # The newest attempt failed (retry time reached) or its owner stopped heartbeating.
    if used >= route.max_attempts:
        return Decision(
            DecisionState.GIVE_UP, ref, obj, next_attempt=newest.number, claims=job_claims
        )
    return Decision(DecisionState.CLAIMABLE, ref, obj, next_attempt=next_attempt, claims=job_claims)


def _still_dispatched(
    snapshot: Snapshot,
    job_id: str,
    claim: ObjectInfo,
    dispatched: Collection[str],
    start_deadline_seconds: float,
) -> bool:
    # Spawned, never heartbeaten (still in an executor's queue): alive until the deadline.
    return job_id in dispatched and _age_s(snapshot, claim) <= start_deadline_seconds


# -- claim bodies, read on demand ----------------------------------------------------------


async def dispatched_jobs(
    bucket: Bucket, snapshot: Snapshot, *, lease_ttl_seconds: float, start_deadline_seconds: float
) -> frozenset[str]:
    """Jobs whose newest claim is past the lease but was never heartbeaten by a worker.

    One GET per claim aged between the lease and the start deadline (few: only claims
    still queued, or whose worker died); an unreadable body counts as not dispatched.
    """
    candidates: list[tuple[str, str]] = []
    for job_id, job_claims in snapshot.claims.items():
        newest = job_claims.newest
        if newest is None or newest.claim is None or newest.released:
            continue
        if is_done(snapshot, job_id, job_claims):
            continue
        if newest.failed_retry_at_ms is not None:
            continue
        age = _age_s(snapshot, newest.claim)
        if lease_ttl_seconds < age <= start_deadline_seconds:
            candidates.append((job_id, newest.claim.key))
    bodies = await asyncio.gather(
        *(bucket.get_bytes(key) for _, key in candidates), return_exceptions=True
    )
    out: set[str] = set()
    for (job_id, _), body in zip(candidates, bodies, strict=True):
        try:
            if isinstance(body, bytes) and json.loads(body).get("phase") == DISPATCHED_PHASE:
                out.add(job_id)
        except (ValueError, AttributeError):
            pass
    return frozenset(out)


PROGRESS_FIELDS = ("phase", "progress", "attempt", "owner", "updated_at")


async def last_error(bucket: Bucket, decision: Decision) -> str:
    """The message of the newest failure record (one GET), for a give-up manifest."""
    newest = decision.claims.newest if decision.claims else None
    if newest and newest.failure_key:
        try:
            return json.loads(await bucket.get_bytes(newest.failure_key)).get("message", "")
        except (BucketError, ValueError):
            return "the last attempt failed (its error record could not be read)"
    return "the worker stopped heartbeating (crashed, killed or out of memory)"


async def read_progress(bucket: Bucket, claim_keys: Iterable[str]) -> list[dict[str, object]]:
    """The heartbeat fields of each claim (one GET each, in parallel); {} where unreadable."""
    keys = list(claim_keys)
    bodies = await asyncio.gather(*(bucket.get_bytes(k) for k in keys), return_exceptions=True)
    out: list[dict[str, object]] = []
    for body in bodies:
        fields: dict[str, object] = {}
        if isinstance(body, bytes):
            try:
                data = json.loads(body)
                fields = {k: data.get(k) for k in PROGRESS_FIELDS}
            except (ValueError, AttributeError):
                pass
        out.append(fields)
    return out
