"""The retry policy of a transient failure: schedule another attempt, or give up.

Used by the runner when an attempt fails transiently and by the local watcher
when a worker process died holding a job. Below ``max_attempts`` it writes the
attempt's failure record (the tick claims the next attempt once its retry time
passed); at the last attempt it commits a "gave_up" manifest.
"""

from __future__ import annotations

import time
from datetime import datetime

import structlog
from structlog.typing import FilteringBoundLogger

from gpu.device import DeviceInfo
from handlers.jobs.claims import record_failure
from handlers.jobs.commit import commit
from handlers.jobs.manifests import gave_up_manifest
from handlers.jobs.outcome import JobOutcome, JobStatus
from handlers.jobs.retry import backoff_delay
from handlers.jobs.spec import JobSpec
from infra.storage.bucket import Bucket
from infra.text import one_line

log: FilteringBoundLogger = structlog.get_logger(__name__)


async def record_transient_failure(
    bucket: Bucket,
    job: JobSpec,
    message: str,
    *,
    device: DeviceInfo | None,
    worker: str,
    started_at: datetime | None = None,
    timings: dict[str, float | None] | None = None,
) -> JobOutcome:
    """Schedule a retry with backoff (equal jitter), or commit "gave_up" after the last attempt."""
    policy = job.retry
    try:
        if job.attempt >= policy.max_attempts:
            manifest = gave_up_manifest(
                job,
                job.attempt,
                message,
                device=device,
                worker=worker,
                started_at=started_at,
                timings=timings,
            )
            body = manifest.to_json_bytes()
            won = await commit(bucket, job.ref, body, failed=True, notify_url=job.notify_url)
            log.warning("gave_up", attempts=job.attempt, committed=won)
            return JobOutcome(
                JobStatus.FAILED if won else JobStatus.FENCED,
                manifest.error.message if manifest.error else "",
                job.ref.manifest_key if won else None,
            )
        delay = backoff_delay(job.attempt, policy.backoff_base_seconds, policy.backoff_max_seconds)
        retry_at_ms = int((time.time() + delay) * 1000)
        await record_failure(bucket, job.ref, job.attempt, message=message, retry_at_ms=retry_at_ms)
        log.info("retry_scheduled", retry_in_s=round(delay, 1), error=message)
        return JobOutcome(JobStatus.RETRY, message)
    except Exception as exc:  # storage is down: the lease expiry retries the job
        log.error("failure_not_recorded", error=one_line(exc))
        return JobOutcome(JobStatus.RETRY, message)
