"""watcher/state.py without a server: snapshot parsing and one table row per decision state.

``build_snapshot`` and ``classify`` are pure, so every state is built here from
ObjectInfo lists; the scenario tests (test_pipeline_core.py, ...) drive the same
states through real buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from handlers.contract.keys import CLAIMS, DONE, FAILED, JobRef
from infra.storage.bucket import Listing, ObjectInfo, SkippedEntry
from tests.pipeline_helpers import counting_route, make_config
from watcher.state import (
    DecisionState,
    Snapshot,
    build_snapshot,
    classify,
    parse_claims,
    warn_skipped_once,
)

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
TTL = 60.0  # lease TTL: a claim older than this is stale
SETTLE = 10.0
MAX_ATTEMPTS = 2
ROUTE = "r"
REF = JobRef(ROUTE, "clip.bin", "e1")


def _obj(key: str, age_s: float) -> ObjectInfo:
    return ObjectInfo(key, "x", 1, NOW - timedelta(seconds=age_s))


def _listing(*objects: ObjectInfo, server_time: datetime = NOW) -> Listing:
    return Listing(list(objects), server_time)


def _ms(offset_s: float) -> int:
    return int((NOW + timedelta(seconds=offset_s)).timestamp() * 1000)


@dataclass(frozen=True)
class Row:
    """One bucket state of REF's input and what the tick must decide about it."""

    state: DecisionState
    claims: list[tuple[str, float]] = field(default_factory=list)  # (key, age in seconds)
    done: bool = False
    input_key: str = REF.input_key
    input_age_s: float = 100.0  # settled unless a row says otherwise
    next_attempt: int = 0
    wait_s: float = 0.0


def claim(n: int, age_s: float) -> tuple[str, float]:
    return REF.claim_key(n), age_s


def failed(n: int, retry_in_s: float) -> tuple[str, float]:
    return REF.failure_key(n, _ms(retry_in_s)), 1.0


def released(n: int) -> tuple[str, float]:
    return REF.released_key(n), 1.0


ROWS: dict[str, Row] = {
    "litter is ignored": Row(DecisionState.IGNORED, input_key="inputs/r/.DS_Store"),
    "committed": Row(DecisionState.DONE, done=True),
    "committed, committer still cleaning up": Row(
        DecisionState.DONE, done=True, claims=[claim(1, TTL - 1)]
    ),
    "committed, committer died before cleanup": Row(
        DecisionState.REPAIR, done=True, claims=[claim(1, TTL + 1)]
    ),
    "too new to claim": Row(DecisionState.SETTLING, input_age_s=3.0, wait_s=SETTLE - 3.0),
    "new": Row(DecisionState.CLAIMABLE, next_attempt=1),
    "heartbeat within the lease": Row(DecisionState.RUNNING, claims=[claim(1, TTL - 1)]),
    "owner stopped heartbeating": Row(
        DecisionState.CLAIMABLE, claims=[claim(1, TTL + 1)], next_attempt=2
    ),
    "failed, retry not due": Row(
        DecisionState.RETRY_WAIT,
        claims=[claim(1, 5), failed(1, retry_in_s=30)],
        next_attempt=2,
        wait_s=30.0,
    ),
    "failed, retry due": Row(
        DecisionState.CLAIMABLE, claims=[claim(1, 5), failed(1, retry_in_s=-1)], next_attempt=2
    ),
    "released (Ctrl-C)": Row(
        DecisionState.CLAIMABLE, claims=[claim(1, 5), released(1)], next_attempt=2
    ),
    "released attempts use up no try": Row(
        DecisionState.CLAIMABLE,
        claims=[claim(1, 9), released(1), claim(2, 5), failed(2, retry_in_s=-1)],
        next_attempt=3,
    ),
    "every try failed": Row(
        DecisionState.GIVE_UP,
        claims=[claim(1, 9), failed(1, -9), claim(2, 5), failed(2, retry_in_s=-1)],
        next_attempt=MAX_ATTEMPTS,
    ),
    "last try's owner died": Row(
        DecisionState.GIVE_UP,
        claims=[claim(1, 9), failed(1, -9), claim(2, TTL + 1)],
        next_attempt=MAX_ATTEMPTS,
    ),
}


def test_the_table_covers_every_decision_state() -> None:
    assert {row.state for row in ROWS.values()} == set(DecisionState)


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_classify(row: Row, tmp_path: Path) -> None:
    config = make_config(
        {ROUTE: counting_route(tmp_path, settle_seconds=SETTLE, max_attempts=MAX_ATTEMPTS)}
    )
    route = config.routes[ROUTE]
    obj = ObjectInfo(row.input_key, REF.etag, 1, NOW - timedelta(seconds=row.input_age_s))
    snapshot = build_snapshot(
        {ROUTE: _listing(obj)},
        done=_listing(*([_obj(REF.done_key, 5)] if row.done else [])),
        claims=_listing(*(_obj(key, age) for key, age in row.claims)),
    )

    d = classify(snapshot, route, obj, lease_ttl_seconds=TTL)

    assert d.state == row.state
    assert d.next_attempt == row.next_attempt
    assert d.wait_s == pytest.approx(row.wait_s, abs=0.01)
    if row.state == DecisionState.IGNORED:
        assert d.ref is None and d.detail == "hidden file"
    else:
        assert d.ref == REF and d.obj is obj


def test_snapshot_takes_the_oldest_server_clock_and_counts_requests() -> None:
    early = NOW - timedelta(seconds=7)
    snapshot = build_snapshot(
        {"a": _listing(_obj("inputs/a/x", 1)), "b": Listing([], early, requests=3)},
        done=_listing(_obj(f"{DONE}a/x@e1", 1)),
        claims=_listing(),
        failed=_listing(_obj(f"{FAILED}a/x@e1", 1)),
    )
    assert snapshot.server_time == early  # stale-or-not is judged by the slowest clock
    assert snapshot.requests == 3 + 1 + 1 + 1 + 1
    assert snapshot.inputs == {"a": [_obj("inputs/a/x", 1)], "b": []}
    assert set(snapshot.done) == {"a/x@e1"} and snapshot.failed == {"a/x@e1"}
    without = build_snapshot({}, done=_listing(), claims=_listing())
    assert without.failed == set()


def test_parse_claims_groups_attempts_and_skips_foreign_keys() -> None:
    other = JobRef(ROUTE, "clip.bin", "e10")  # its prefix starts like REF's
    objects = [
        _obj(REF.claim_key(1), 9),
        _obj(REF.failure_key(1, 1_700_000_000_123), 8),
        _obj(REF.claim_key(2), 5),
        _obj(REF.released_key(2), 4),
        _obj(other.claim_key(1), 3),
        _obj(f"{CLAIMS}garbage", 1),
        _obj(f"{CLAIMS}{REF.job_id}/attempt-1.bogus", 1),
    ]
    claims = parse_claims(objects)

    assert set(claims) == {REF.job_id, other.job_id}
    job = claims[REF.job_id]
    one, two = job.attempts[1], job.attempts[2]
    assert one.claim == objects[0] and one.failed_retry_at_ms == 1_700_000_000_123
    assert one.failure_key == REF.failure_key(1, 1_700_000_000_123) and not one.released
    assert two.claim == objects[2] and two.released and two.failed_retry_at_ms is None
    assert job.newest is two
    assert job.attempts_used == 1  # the released attempt does not count
    assert job.claim_objects() == [objects[0], objects[2]]
    assert claims[other.job_id].attempts_used == 1


# -- skipped entries (folder bucket: names that can never be keys, symlinks, FIFOs, ...) --


def test_snapshot_carries_each_routes_skipped_entries() -> None:
    odd = SkippedEntry("inputs/a/bad\\nname.mp4", "unaddressable_name", "newline in the name")
    fifo = SkippedEntry("inputs/b/pipe", "special_file", "a FIFO, not a regular file")
    internal = SkippedEntry("_dropgpu/done/x", "symlink", "a symlink")
    snapshot = build_snapshot(
        {
            "a": Listing([_obj("inputs/a/ok.mp4", 100)], NOW, skipped=[odd]),
            "b": Listing([], NOW, skipped=[fifo]),
            "c": _listing(),
        },
        done=Listing([], NOW, skipped=[internal]),
        claims=_listing(),
    )
    # Per route, beside (never among) the inputs; other prefixes' entries are not inputs.
    assert snapshot.skipped == {"a": [odd], "b": [fifo], "c": []}
    assert snapshot.inputs["a"] == [_obj("inputs/a/ok.mp4", 100)]


def test_each_skipped_entry_is_warned_once_per_process() -> None:
    # Names unique to this test: the set of warned entries is process-wide.
    odd = SkippedEntry("inputs/a/once\\tname.mp4", "unaddressable_name", "a tab in the name")
    loop = SkippedEntry("inputs/a/once-loop", "symlink_loop", "a symlink loop")
    reworded = SkippedEntry(odd.name, "unreadable", "permission denied")

    def snapshot(*entries: SkippedEntry) -> Snapshot:
        listing = Listing([], NOW, skipped=list(entries))
        return build_snapshot({"a": listing}, done=_listing(), claims=_listing())

    with capture_logs() as logs:
        assert warn_skipped_once(snapshot(odd, loop)) == 2
        for _ in range(3):  # every later tick sees the same entries: no new lines
            assert warn_skipped_once(snapshot(odd, loop)) == 0
        assert warn_skipped_once(snapshot(odd, reworded)) == 1  # a new reason is news
    assert [(e["event"], e["log_level"], e["name"], e["reason"]) for e in logs] == [
        ("input_skipped", "warning", odd.name, odd.reason),
        ("input_skipped", "warning", loop.name, loop.reason),
        ("input_skipped", "warning", odd.name, reworded.reason),
    ]
    assert {e["route"] for e in logs} == {"a"}
