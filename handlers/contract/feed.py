"""The completion feed: one small record per committed job, under a time-ordered prefix.

A consumer lists ``_dropgpu/feed/`` with ``StartAfter=<last key seen>`` and gets
only new completions, one request per 1,000 (see docs/consumers.md). This module
is the record's format; handlers/jobs/commit.py writes it right after the
manifest, for whoever commits: the job runner, the tick (give-ups) and the repair
path. Timestamps come from the writer's clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from handlers.contract.keys import JobRef, feed_key
from handlers.contract.manifest import iso, utc_now

FEED_VERSION = 1


class FeedRecord(BaseModel):
    """The body of ``_dropgpu/feed/<time>-<job hash>-<route>.json``."""

    # Extra fields are allowed so a newer writer never breaks an older consumer.
    model_config = ConfigDict(extra="allow", frozen=True)

    feed_version: int = FEED_VERSION
    manifest_key: str
    input_key: str
    route: str
    status: Literal["succeeded", "failed"]
    etag: str  # the input version this manifest describes
    job_id: str
    committed_at: str  # UTC ISO-8601, the writer's clock; also the time in the key


def build_feed_record(
    ref: JobRef, *, failed: bool, committed_at: datetime | None = None
) -> tuple[str, bytes]:
    """(key, body) of the feed record for a job whose manifest was just published."""
    at = committed_at or utc_now()
    record = FeedRecord(
        manifest_key=ref.manifest_key,
        input_key=ref.input_key,
        route=ref.route,
        status="failed" if failed else "succeeded",
        etag=ref.etag,
        job_id=ref.job_id,
        committed_at=iso(at) or "",
    )
    return feed_key(ref, at), record.model_dump_json().encode()
