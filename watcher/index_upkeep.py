"""The tick's upkeep of the done index: compaction, state collection, feed retention.

Runs at the end of a tick (watcher/tick.py), on the snapshot that tick took, so it
costs no listing of its own except the feed-retention range. The rules and their
safety arguments are in watcher/done_index.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.contract.keys import JobRef
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError
from infra.text import one_line
from watcher.config import Config
from watcher.done_index import (
    CompactionPolicy,
    collect_orphan_claims,
    compact,
    needs_compaction,
    prune_feed,
)

if TYPE_CHECKING:  # only for annotations: state imports this module's caller
    from watcher.state import Snapshot
    from watcher.tick import TickReport

log: FilteringBoundLogger = structlog.get_logger(__name__)


def policy_for(config: Config, route_name: str) -> CompactionPolicy:
    settings = config.watch
    route = config.routes[route_name]
    keeps_inputs = route.after_success == "keep"
    return CompactionPolicy(
        records=settings.index_compact_records,
        seconds=settings.index_compact_seconds,
        state_grace_seconds=settings.state_grace_seconds if keeps_inputs else None,
    )


async def maintain_index(
    bucket: Bucket,
    config: Config,
    snapshot: Snapshot,
    misses: dict[str, dict[str, bool]],
    report: TickReport,
) -> None:
    """Compact the routes that need it; collect orphan claims; prune the feed.

    ``misses``: route -> {job id: failed} of done jobs this tick found by GET that the
    index did not know; a route with any is compacted now so the next tick knows them.
    Storage errors are logged: the next tick tries again.
    """
    now = snapshot.server_time
    compacted = False
    for route in config.enabled_routes():
        rd = snapshot.done_routes.get(route.name)
        if rd is None:
            continue
        policy = policy_for(config, route.name)
        found = misses.get(route.name, {})
        if not found and not needs_compaction(rd, policy, now):
            continue
        try:
            result = await compact(
                bucket,
                rd,
                policy,
                now=now,
                # A listing that skipped entries (an unreadable folder of a folder
                # bucket) is not complete: nothing may be judged gone from it.
                inputs=None if snapshot.skipped.get(route.name) else snapshot.inputs[route.name],
                claims=snapshot.claim_objects,
                input_prefix=route.prefix,
                extra_done=found,
            )
        except BucketError as exc:
            log.warning("done_index_not_written", route=route.name, error=one_line(exc))
            continue
        compacted = True
        report.index_generations += int(result.written)
        report.collected += result.collected
    if not compacted:
        return
    # The rest rides on compactions: a few times an hour, not every tick.
    settings = config.watch
    try:
        # An incomplete listing (skipped entries) cannot tell which claims are orphaned.
        if not any(snapshot.skipped.values()):
            present = {
                JobRef(r.name, o.key[len(r.prefix) :], o.etag).job_id
                for r in config.enabled_routes()
                for o in snapshot.inputs.get(r.name, [])
            }
            report.collected += await collect_orphan_claims(
                bucket,
                snapshot.claim_objects,
                present,
                route_prefixes=tuple(f"{r.name}/" for r in config.enabled_routes()),
                now=now,
                grace_s=settings.state_grace_seconds,
            )
        if settings.feed_retention_days is not None:
            await prune_feed(bucket, timedelta(days=settings.feed_retention_days), now=now)
    except BucketError as exc:
        log.warning("state_collection_failed", error=one_line(exc))
