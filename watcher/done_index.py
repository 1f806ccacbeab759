"""The done index: which jobs of a route finished, without listing every done marker.

Without it a tick lists ``_dropgpu/done/`` whole, so its cost grows with every job
ever run. With it, a tick reads:

* one LIST of ``_dropgpu/index/`` (two small objects per route), and one GET of a
  route's newest index generation when this process has not cached it yet:
  ``_dropgpu/index/<route>/<generation>.json.gz``, a gzipped JSON list of job ids;
* one LIST of the completion feed after the oldest index's ``feed_cursor``: the
  jobs committed since, by job hash (the feed key carries it; no GET).

A compaction (``compact``, run by the tick every ``index_compact_records``
completions or ``index_compact_seconds``) folds the feed records since the cursor
into a new generation, written with create-if-absent: of several watchers
compacting at once exactly one writes generation n+1, the others lose the race
and change nothing. Readers take the newest generation that decodes; a deleted or
corrupt index is rebuilt from a full listing of the route's done markers.

Correctness never depends on the index: the done marker stays the fence. A job
the index and the feed both miss (a feed record that could not be written) looks
claimable; the tick GETs its done marker before claiming (watcher/tick.py), and
the runner checks again before it downloads. ``dropgpu retry`` writes a reset
marker into the job's claims (handlers/jobs/claims.py), which outranks the index.

Compaction also collects state (``state_grace_seconds``): on ``after_success =
"keep"`` routes, the done marker, failure record and claim leftovers of an input
version that has been gone from ``inputs/`` that long; on other routes the input
is gone by design and its done state is what makes a re-upload do nothing. And it
deletes feed records older than ``feed_retention_days``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import secrets
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.contract.keys import (
    DONE,
    FAILED,
    FEED,
    INDEX,
    FeedKey,
    JobRef,
    feed_start_key,
    index_key,
    job_hash_of,
    parse_feed_key,
    parse_index_key,
)
from infra.storage.bucket import Bucket, Listing, ObjectInfo
from infra.storage.errors import BucketError, ObjectNotFound
from infra.text import one_line

log: FilteringBoundLogger = structlog.get_logger(__name__)

INDEX_VERSION = 1
# A feed record's time is its writer's clock, taken just before its PUT: records may
# become visible a little out of order. The cursor stays this far behind, so a late
# record is still listed; re-reading a few minutes of records costs a page at most.
FEED_LOOKBACK = timedelta(minutes=10)
# Generations kept: the newest and the one before it (a reader may be fetching it).
KEEP_GENERATIONS = 2
FEED_GET_CONCURRENCY = 32
# Deletes per compaction (state collection, feed retention): bounded, the rest next time.
MAX_DELETES_PER_PASS = 1_000


@dataclass(frozen=True, slots=True)
class DoneIndex:
    """One generation of a route's index (immutable once written)."""

    route: str
    generation: int
    created_at: datetime
    # Every feed record after this StartAfter key may be missing from ``done``.
    feed_cursor: str
    done: frozenset[str]  # job ids with a done marker
    failed: frozenset[str]  # the subset whose final manifest is a failure
    # Job id -> epoch seconds since when its input version has been gone (keep routes).
    missing_since: Mapping[str, float] = field(default_factory=dict)
    # Feed keys after the cursor already folded in: not counted as new again.
    folded: frozenset[str] = frozenset()
    # Who wrote it: two watchers never write byte-identical generations (S3's
    # create-if-absent treats identical bytes as its own retry and would say "won").
    writer: str = ""

    def encode(self) -> bytes:
        body = {
            "index_version": INDEX_VERSION,
            "route": self.route,
            "generation": self.generation,
            "created_at": self.created_at.astimezone(UTC).isoformat(),
            "feed_cursor": self.feed_cursor,
            "count": len(self.done),
            "done": sorted(self.done),
            "failed": sorted(self.failed),
            "missing_since": dict(sorted(self.missing_since.items())),
            "folded": sorted(self.folded),
            "writer": self.writer,
        }
        # Level 6: a 1M-job index compresses several times faster than at 9, ~5% larger.
        raw = json.dumps(body, separators=(",", ":")).encode()
        return gzip.compress(raw, compresslevel=6, mtime=0)

    @classmethod
    def decode(cls, body: bytes, *, route: str, generation: int) -> DoneIndex:
        """Parse one generation; ValueError when it is not a complete index of ``route``."""
        try:
            data = json.loads(gzip.decompress(body))
        except (OSError, EOFError, ValueError) as e:  # gzip's CRC catches a cut body
            raise ValueError(f"not a gzipped JSON index: {e}") from e
        if not isinstance(data, dict) or data.get("index_version") != INDEX_VERSION:
            raise ValueError("unknown index version")
        if data.get("route") != route or data.get("generation") != generation:
            raise ValueError("route or generation does not match the key")
        done, failed = data.get("done"), data.get("failed")
        missing = data.get("missing_since", {})
        folded = data.get("folded", [])
        if not isinstance(done, list) or not all(isinstance(j, str) for j in done):
            raise ValueError("done is not a list of job ids")
        if data.get("count") != len(done):
            raise ValueError("count does not match the list: incomplete index")
        if not isinstance(failed, list) or not isinstance(missing, dict):
            raise ValueError("failed or missing_since has the wrong type")
        if not isinstance(folded, list):
            raise ValueError("folded is not a list")
        cursor = data.get("feed_cursor")
        if not isinstance(cursor, str) or not cursor.startswith(FEED):
            raise ValueError("feed_cursor is not a feed key")
        return cls(
            route=route,
            generation=generation,
            created_at=datetime.fromisoformat(str(data.get("created_at"))),
            feed_cursor=cursor,
            done=frozenset(done),
            failed=frozenset(str(j) for j in failed),
            missing_since={str(k): float(v) for k, v in missing.items()},
            folded=frozenset(str(k) for k in folded),
            writer=str(data.get("writer", "")),
        )


# Generations are immutable: a process keeps the newest it read of each route, by key
# and ETag, so a tick GETs an index only when a new generation appeared.
_cache: dict[tuple[str, str], tuple[str, str, DoneIndex]] = {}


def _cached(bucket: Bucket, obj: ObjectInfo, route: str) -> DoneIndex | None:
    hit = _cache.get((bucket.url, route))
    if hit and hit[0] == obj.key and hit[1] == obj.etag:
        return hit[2]
    return None


def _remember(bucket: Bucket, key: str, etag: str, index: DoneIndex) -> None:
    _cache[(bucket.url, index.route)] = (key, etag, index)


@dataclass(slots=True)
class RouteDone:
    """What one snapshot knows about one route's finished jobs."""

    route: str
    index: DoneIndex | None
    generations: list[ObjectInfo]  # every index object listed, oldest first
    # Filled only when no index could be read: the full listings, for a rebuild.
    listed_done: frozenset[str] | None = None
    listed_failed: frozenset[str] | None = None
    listed_at: datetime | None = None
    recent: list[FeedKey] = field(default_factory=list)  # feed records after the cursor
    # Feed records of every route after this route's cursor: what each tick re-lists
    # because of it, so an idle route's cursor is moved on when others are busy.
    feed_behind: int = 0

    @property
    def next_generation(self) -> int:
        numbers = [g for o in self.generations if (g := _generation(o.key)) is not None]
        return max(numbers, default=0) + 1


def _generation(key: str) -> int | None:
    parsed = parse_index_key(key)
    return parsed[1] if parsed else None


@dataclass(slots=True)
class DoneView:
    """``job_id in view``: finished, by the index, the feed since it, or a full listing."""

    indexed: set[str] = field(default_factory=set)  # from index generations
    listed: set[str] = field(default_factory=set)  # from full listings of done markers
    recent_hashes: set[str] = field(default_factory=set)  # job hashes from the feed
    # True when every route's done markers were listed (no index): membership is exact.
    exhaustive: bool = True

    def __contains__(self, job_id: object) -> bool:
        if not isinstance(job_id, str):
            return False
        if job_id in self.listed or job_id in self.indexed:
            return True
        return bool(self.recent_hashes) and job_hash_of(job_id) in self.recent_hashes

    def listed_as_done(self, job_id: str) -> bool:
        """Done by an actual listing of done markers (a reset marker cannot outrank that)."""
        return job_id in self.listed

    def __iter__(self) -> Iterator[str]:
        """The job ids known by name (feed-only jobs are known by hash until compacted)."""
        yield from self.listed
        yield from self.indexed - self.listed

    def __len__(self) -> int:
        return len(self.listed | self.indexed)


@dataclass(slots=True)
class DoneReading:
    view: DoneView
    routes: dict[str, RouteDone]
    requests: int
    server_times: list[datetime]


async def read_done(bucket: Bucket, routes: Iterable[str]) -> DoneReading:
    """The done view of ``routes`` from their indexes and the feed (see the module doc).

    Call it after the claims were listed: a commit writes its feed record before it
    deletes its claims, so a job whose claims are gone from that listing is in the feed.
    """
    names = list(routes)
    listing = await bucket.list(INDEX)
    requests, times = listing.requests, [listing.server_time]
    by_route: dict[str, list[ObjectInfo]] = {r: [] for r in names}
    for obj in listing.objects:
        parsed = parse_index_key(obj.key)
        if parsed and parsed[0] in by_route:
            by_route[parsed[0]].append(obj)
    for objs in by_route.values():
        objs.sort(key=lambda o: o.key)
    loaded = await asyncio.gather(*(_load_newest(bucket, r, by_route[r]) for r in names))
    out: dict[str, RouteDone] = {}
    view = DoneView(exhaustive=True)
    for name, index in zip(names, loaded, strict=True):
        rd = RouteDone(name, index, by_route[name])
        out[name] = rd
        if index is not None:
            view.indexed |= index.done
            view.exhaustive = False
    rebuild = [rd for rd in out.values() if rd.index is None]
    if rebuild:
        prefixes = [p for rd in rebuild for p in (f"{DONE}{rd.route}/", f"{FAILED}{rd.route}/")]
        listings: list[Listing] = await asyncio.gather(*(bucket.list(p) for p in prefixes))
        for i, rd in enumerate(rebuild):
            done_l, failed_l = listings[2 * i], listings[2 * i + 1]
            rd.listed_done = frozenset(o.key[len(DONE) :] for o in done_l.objects)
            rd.listed_failed = frozenset(o.key[len(FAILED) :] for o in failed_l.objects)
            rd.listed_at = min(done_l.server_time, failed_l.server_time)
            view.listed |= rd.listed_done
            requests += done_l.requests + failed_l.requests
            times.append(rd.listed_at)
    cursors = [rd.index.feed_cursor for rd in out.values() if rd.index is not None]
    if cursors:
        feed = await bucket.list(FEED, start_after=min(cursors))
        requests += feed.requests
        times.append(feed.server_time)
        for rd in out.values():
            if rd.index is not None:
                cursor, folded = rd.index.feed_cursor, rd.index.folded
                rd.feed_behind = sum(
                    1 for o in feed.objects if o.key > cursor and o.key not in folded
                )
        for obj in feed.objects:
            fk = parse_feed_key(obj.key)
            rd = out.get(fk.route) if fk else None
            if fk is None or rd is None or rd.index is None or obj.key <= rd.index.feed_cursor:
                continue
            if obj.key in rd.index.folded:
                continue  # in the index already (it is younger than the cursor's lookback)
            rd.recent.append(fk)
            view.recent_hashes.add(fk.job_hash)
    return DoneReading(view, out, requests, times)


async def _load_newest(bucket: Bucket, route: str, objs: list[ObjectInfo]) -> DoneIndex | None:
    """The newest generation that decodes; older ones are the fall-back, then None."""
    for obj in reversed(objs):
        generation = _generation(obj.key)
        assert generation is not None
        if (hit := _cached(bucket, obj, route)) is not None:
            return hit
        try:
            body = await bucket.get_bytes(obj.key)
            index = DoneIndex.decode(body, route=route, generation=generation)
        except ObjectNotFound:
            continue  # pruned by a compaction just now: an older or newer one will do
        except (BucketError, ValueError) as e:
            log.warning("done_index_unreadable", index=obj.key, error=one_line(e))
            continue
        _remember(bucket, obj.key, obj.etag, index)
        return index
    return None


# -- compaction -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    records: int  # compact once this many feed records are past the cursor
    seconds: float  # ... or once the index is this old and anything changed
    state_grace_seconds: float | None  # None: never collect (the route keeps no inputs)


@dataclass(slots=True)
class CompactionReport:
    route: str
    written: bool = False  # this watcher wrote the new generation
    generation: int = 0
    jobs: int = 0
    collected: int = 0  # job versions whose state was collected
    requests: int = 0


def needs_compaction(rd: RouteDone, policy: CompactionPolicy, now: datetime) -> bool:
    """Whether ``rd`` (from this tick's reading) should get a new generation now."""
    if rd.index is None:
        return True
    if len(rd.recent) >= policy.records:
        return True
    age = (now - rd.index.created_at).total_seconds()
    behind = rd.feed_behind >= policy.records
    grace = policy.state_grace_seconds
    if grace is None:
        return age >= policy.seconds and (bool(rd.recent) or behind)
    # Inputs deleted since are only noticed by a compaction: one at least every grace/2.
    t = now.timestamp()
    due = any(t - since >= grace for since in rd.index.missing_since.values())
    return (age >= policy.seconds and (bool(rd.recent) or behind or due)) or age >= grace / 2


async def compact(
    bucket: Bucket,
    rd: RouteDone,
    policy: CompactionPolicy,
    *,
    now: datetime,
    inputs: Iterable[ObjectInfo] | None,
    claims: Mapping[str, Iterable[ObjectInfo]],
    input_prefix: str,
    extra_done: Mapping[str, bool] | None = None,
) -> CompactionReport:
    """Write generation n+1 of ``rd.route``'s index (create-if-absent; losing is fine).

    ``inputs``: the route's complete input listing of this tick (for state collection;
    None skips it). ``claims``: job id -> its claim-family objects, from the same tick.
    ``extra_done``: job id -> failed, for done markers the tick found by GET.
    """
    report = CompactionReport(rd.route)
    if rd.index is not None:
        done, failed = set(rd.index.done), set(rd.index.failed)
        missing = dict(rd.index.missing_since)
        cursor = rd.index.feed_cursor
        finished = await _read_feed_records(bucket, rd.route, rd.recent)
        report.requests += len(rd.recent)
        for job_id, status in finished:
            done.add(job_id)
            (failed.add if status == "failed" else failed.discard)(job_id)
    else:
        assert rd.listed_done is not None and rd.listed_failed is not None
        assert rd.listed_at is not None
        done, failed, missing = set(rd.listed_done), set(rd.listed_failed), {}
        # Everything committed after the listing has a feed record after this key.
        cursor = feed_start_key(rd.listed_at - FEED_LOOKBACK)
    for job_id, was_failed in (extra_done or {}).items():
        done.add(job_id)
        if was_failed:
            failed.add(job_id)
    if inputs is not None and policy.state_grace_seconds is not None:
        report.collected = await _collect_state(
            bucket,
            rd.route,
            input_prefix,
            inputs,
            claims,
            done,
            failed,
            missing,
            now=now,
            grace_s=policy.state_grace_seconds,
        )
    # Every record visible after the cursor was folded in, and one not visible yet is
    # younger than the lookback: the cursor may move up to it (never back).
    cursor = max(cursor, feed_start_key(now - FEED_LOOKBACK))
    seen = (rd.index.folded if rd.index else frozenset()) | {fk.key for fk in rd.recent}
    generation = rd.next_generation
    index = DoneIndex(
        rd.route,
        generation,
        now,
        cursor,
        frozenset(done),
        frozenset(failed),
        missing,
        folded=frozenset(k for k in seen if k > cursor),
        writer=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}",
    )
    key = index_key(rd.route, generation)
    body = index.encode()
    report.generation, report.jobs = generation, len(done)
    report.requests += 1
    if not await bucket.create_if_absent(key, body, content_type="application/gzip"):
        log.info("done_index_race_lost", route=rd.route, generation=generation)
        return report
    report.written = True
    listing = await bucket.list(key)
    for obj in listing.objects:
        if obj.key == key:
            _remember(bucket, key, obj.etag, index)
    report.requests += 1
    # Older generations: all but the one before this (a reader may be fetching it).
    for obj in rd.generations:
        g = _generation(obj.key)
        if g is not None and g <= generation - KEEP_GENERATIONS:
            await _delete_quietly(bucket, obj.key)
            report.requests += 1
    log.info(
        "done_index_written",
        route=rd.route,
        generation=generation,
        jobs=len(done),
        folded=len(rd.recent),
        collected=report.collected,
        bytes=len(body),
    )
    return report


async def _read_feed_records(
    bucket: Bucket, route: str, recent: list[FeedKey]
) -> list[tuple[str, str]]:
    """(job id, status) of each record, oldest first; a record that does not check out
    (unreadable, another route's, a job id whose hash is not the key's) is skipped."""
    limit = asyncio.Semaphore(FEED_GET_CONCURRENCY)

    async def one(fk: FeedKey) -> tuple[str, str] | None:
        async with limit:
            try:
                data = json.loads(await bucket.get_bytes(fk.key))
            except (BucketError, ValueError):
                return None
        job_id, status = data.get("job_id"), data.get("status")
        if not isinstance(job_id, str) or job_hash_of(job_id) != fk.job_hash:
            return None
        if data.get("route") != route or status not in ("succeeded", "failed"):
            return None
        return job_id, status

    results = await asyncio.gather(*(one(fk) for fk in sorted(recent, key=lambda f: f.key)))
    return [r for r in results if r is not None]


async def _collect_state(
    bucket: Bucket,
    route: str,
    input_prefix: str,
    inputs: Iterable[ObjectInfo],
    claims: Mapping[str, Iterable[ObjectInfo]],
    done: set[str],
    failed: set[str],
    missing: dict[str, float],
    *,
    now: datetime,
    grace_s: float,
) -> int:
    """Delete the state of input versions gone for ``grace_s``; updates the sets in place.

    Only keys under ``_dropgpu/`` are deleted: outputs and manifests are the user's.
    Deleting a done marker whose input comes back later makes that upload run again
    (a rerun, never a lost job).
    """
    present = {JobRef(route, o.key[len(input_prefix) :], o.etag).job_id for o in inputs}
    t = now.timestamp()
    for job_id in list(missing):
        if job_id in present or job_id not in done:
            del missing[job_id]
    for job_id in done - present:
        missing.setdefault(job_id, t)
    due = sorted(j for j, since in missing.items() if t - since >= grace_s)
    due = due[:MAX_DELETES_PER_PASS]
    collected = 0
    for job_id in due:
        keys = [f"{DONE}{job_id}", f"{FAILED}{job_id}"]
        keys += [o.key for o in claims.get(job_id, ())]
        try:
            # Claims first, the done marker last: cut short, the job is still done.
            for key in reversed(keys):
                await bucket.delete(key)
        except BucketError as e:
            log.warning("state_not_collected", job_id=job_id, error=one_line(e))
            continue
        done.discard(job_id)
        failed.discard(job_id)
        del missing[job_id]
        collected += 1
    return collected


async def collect_orphan_claims(
    bucket: Bucket,
    claims: Mapping[str, Iterable[ObjectInfo]],
    present: set[str],
    *,
    route_prefixes: tuple[str, ...],
    now: datetime,
    grace_s: float,
) -> int:
    """Delete the claim leftovers of jobs whose input version has been gone for ``grace_s``.

    A job's claims are only touched when every one of them is older than the grace
    period (a live or recently failed attempt writes fresh ones) and its input
    version is not in this tick's listing.
    """
    collected = 0
    for job_id, objs in claims.items():
        if collected >= MAX_DELETES_PER_PASS:
            break
        objs = list(objs)
        if job_id in present or not job_id.startswith(route_prefixes) or not objs:
            continue
        if any((now - o.last_modified).total_seconds() < grace_s for o in objs):
            continue
        for obj in objs:
            await _delete_quietly(bucket, obj.key)
        collected += 1
    return collected


async def prune_feed(bucket: Bucket, retention: timedelta, *, now: datetime) -> int:
    """Delete feed records older than ``retention`` (at most MAX_DELETES_PER_PASS)."""
    old = await bucket.list_range(FEED, end_before=feed_start_key(now - retention))
    n = 0
    for obj in old.objects[:MAX_DELETES_PER_PASS]:
        if parse_feed_key(obj.key) is not None:
            await _delete_quietly(bucket, obj.key)
            n += 1
    if n:
        log.info("feed_records_pruned", deleted=n)
    return n


async def _delete_quietly(bucket: Bucket, key: str) -> None:
    try:
        await bucket.delete(key)
    except BucketError as e:  # retried by the next pass
        log.warning("state_delete_failed", key=key, error=one_line(e))
