"""What a worker needs to run one claimed job: plain data, safe to pickle or send.

The watcher builds a JobSpec when it wins a claim; executors (local worker
processes, Modal ``.spawn``) pass it to the job runner. It carries keys and
settings, never file bytes.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import structlog

from handlers.contract.keys import JobRef


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_base_seconds: float = 30.0
    backoff_max_seconds: float = 900.0


@dataclass(frozen=True, slots=True)
class JobSpec:
    route: str
    rel: str
    etag: str
    size: int
    last_modified: str  # ISO-8601 UTC
    attempt: int
    claimed_at: str  # ISO-8601 UTC
    handler: str
    params: dict[str, Any]
    extensions: tuple[str, ...]
    timeout_seconds: float
    lease_ttl_seconds: float
    heartbeat_seconds: float
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    notify_url: str | None = None
    # Job files (DESIGN §10): how long a missing source is waited for (from the job
    # file's LastModified), and the key prefixes sources may come from.
    sources_wait_seconds: float = 900.0
    source_prefixes: tuple[str, ...] = ("inputs/", "sources/", "outputs/")
    # handlers/jobs/after_success.py: "keep" | "delete" | "archive", after a success.
    after_success: str = "keep"
    archive_prefix: str = "archive/"

    @property
    def ref(self) -> JobRef:
        return JobRef(self.route, self.rel, self.etag)

    @property
    def claim_key(self) -> str:
        return self.ref.claim_key(self.attempt)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["extensions"] = list(self.extensions)
        data["source_prefixes"] = list(self.source_prefixes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        data["extensions"] = tuple(data["extensions"])
        if "source_prefixes" in data:
            data["source_prefixes"] = tuple(data["source_prefixes"])
        data["retry"] = RetryPolicy(**data.get("retry", {}))
        return cls(**data)


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def job_log_context(
    ref: JobRef, *, attempt: int | None = None, worker: str | None = None
) -> dict[str, object]:
    """The fields every log line about one job carries (bound with ``bound_contextvars``)."""
    fields: dict[str, object] = {
        "route": ref.route,
        "key": ref.input_key,
        "etag": ref.etag,
        "job_id": ref.job_id,
    }
    if attempt is not None:
        fields["attempt"] = attempt
    if worker is not None:
        fields["worker"] = worker
    return fields


def bound_to_job(spec: JobSpec, worker: str) -> contextlib.AbstractContextManager[None]:
    """Bind one claimed attempt's log context for the ``with`` block."""
    return structlog.contextvars.bound_contextvars(
        **job_log_context(spec.ref, attempt=spec.attempt, worker=worker)
    )
