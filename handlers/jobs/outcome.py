"""What one job attempt came to: the executor's summary, never the manifest itself."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    SUCCEEDED = "succeeded"  # committed a succeeded manifest
    FAILED = "failed"  # committed a failed manifest (input/config error or gave up)
    RETRY = "retry"  # a transient failure: a later attempt runs the job again
    SUPERSEDED = "superseded"  # the claimed version is gone or already committed
    FENCED = "fenced"  # another attempt committed first; this one wrote nothing
    LEASE_LOST = "lease_lost"  # heartbeats lapsed; abandoned without committing
    WAITING = "waiting"  # a job file's source is not there yet: given back, not an attempt


@dataclass(frozen=True, slots=True)
class JobOutcome:
    status: JobStatus
    message: str = ""
    manifest_key: str | None = None
    handler_ran: bool = False
