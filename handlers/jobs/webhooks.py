"""Signed webhooks: POST a committed job's manifest to its route's ``notify_url``.

- Body: the manifest bytes, exactly as written to ``manifest.json``.
- ``X-Dropgpu-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``,
  re-signed on every attempt so the timestamp is fresh; receivers reject stale ones.
- Secret from ``DROPGPU_WEBHOOK_SECRET``. Without it nothing is sent: an unsigned
  webhook could be forged by anyone who knows the URL, so the delivery record says
  ``no_secret`` instead.
- Retries with backoff on connection errors, timeouts, 5xx and 429; a 4xx (other
  than 429) or a redirect is final. Total time is bounded (30 s by default).
- A delivery record goes to ``_dropgpu/webhooks/<job id>.json``.

Delivery never blocks or fails the job: a won commit (handlers/jobs/commit.py)
starts it with ``notify_in_background`` once the manifest is published, and the
worker drains the
pending deliveries (``drain_notifications``) before it exits. Webhooks are a
low-latency hint, at most once per commit; the completion feed is the reliable
channel (docs/consumers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from typing import Literal

import aiohttp
import structlog
from pydantic import BaseModel, Field
from structlog.typing import FilteringBoundLogger

from handlers.contract.keys import JobRef, webhook_record_key
from handlers.contract.manifest import iso, utc_now
from handlers.contract.signature import (
    DELIVERY_HEADER,
    EVENT_COMPLETED,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    sign,
)
from handlers.jobs.retry import backoff_delay, with_storage_retries
from infra.storage.bucket import Bucket
from infra.text import one_line, redact_url, redacted_traceback
from infra.version import dropgpu_version

log: FilteringBoundLogger = structlog.get_logger(__name__)

SECRET_ENV = "DROPGPU_WEBHOOK_SECRET"

Result = Literal["delivered", "rejected", "gave_up", "no_secret"]


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    max_attempts: int = 5
    # Ceilings of 1, 2, 4, 8 s between attempts, with equal jitter (half fixed, half random).
    base_delay_s: float = 1.0
    max_delay_s: float = 8.0
    request_timeout_s: float = 10.0
    # No attempt starts after this, and none runs past it.
    max_total_s: float = 30.0


# Read at call time (not bound as a default argument) so tests can shorten it.
DEFAULT_POLICY = WebhookPolicy()


class Attempt(BaseModel):
    at: str
    status: int | None = None  # HTTP status, None when no response came back
    error: str | None = None
    duration_s: float


class DeliveryRecord(BaseModel):
    delivery_id: str
    job_id: str
    event: str = EVENT_COMPLETED
    url: str  # scheme://host/path only: query strings and userinfo may hold tokens
    result: Result
    message: str
    attempts: list[Attempt] = Field(default_factory=list)
    started_at: str
    finished_at: str


# -- delivery --------------------------------------------------------------------------


def _retry_after_s(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


async def deliver(
    manifest_bytes: bytes,
    url: str,
    secret: str | bytes | None,
    *,
    job_id: str,
    policy: WebhookPolicy | None = None,
) -> DeliveryRecord:
    """POST ``manifest_bytes`` to ``url`` with retries. Never raises for delivery problems."""
    policy = policy or DEFAULT_POLICY
    delivery_id = uuid.uuid4().hex
    started = utc_now()
    where = redact_url(url)
    attempts: list[Attempt] = []

    def record(result: Result, message: str) -> DeliveryRecord:
        return DeliveryRecord(
            delivery_id=delivery_id,
            job_id=job_id,
            url=where,
            result=result,
            message=message,
            attempts=attempts,
            started_at=iso(started) or "",
            finished_at=iso(utc_now()) or "",
        )

    if not secret:
        return record("no_secret", f"{SECRET_ENV} is not set; refusing to send an unsigned webhook")

    deadline = time.monotonic() + policy.max_total_s
    last = "no attempt made"
    timeout = aiohttp.ClientTimeout(total=policy.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for n in range(1, policy.max_attempts + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            now = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"dropgpu/{dropgpu_version()}",
                EVENT_HEADER: EVENT_COMPLETED,
                # The same id on every attempt: receivers dedupe retries with it.
                DELIVERY_HEADER: delivery_id,
                SIGNATURE_HEADER: sign(secret, now, manifest_bytes),
            }
            t0 = time.monotonic()
            retry_after: float | None = None
            try:
                async with session.post(
                    url,
                    data=manifest_bytes,
                    headers=headers,
                    allow_redirects=False,  # never re-send a signed body elsewhere
                    timeout=aiohttp.ClientTimeout(total=min(policy.request_timeout_s, left)),
                ) as resp:
                    status = resp.status
                    retry_after = _retry_after_s(resp.headers.get("Retry-After"))
                    await resp.read()
                error = None
            except aiohttp.InvalidURL as exc:
                return record("rejected", one_line(f"invalid URL: {exc}"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # aiohttp quotes the full URL in its errors: one_line redacts it.
                status, error = None, one_line(f"{type(exc).__name__}: {exc}".strip(": "))
            attempts.append(
                Attempt(
                    at=iso(utc_now()) or "",
                    status=status,
                    error=error,
                    duration_s=round(time.monotonic() - t0, 3),
                )
            )
            if status is not None and 200 <= status < 300:
                return record("delivered", f"HTTP {status} after {n} attempt(s)")
            if status is not None and status != 429 and status < 500:
                # The receiver refused this body (bad signature, gone, redirect): final.
                return record("rejected", f"HTTP {status}: not retried")
            last = f"HTTP {status}" if status is not None else (error or "no response")
            if n == policy.max_attempts:
                break
            delay = backoff_delay(n, policy.base_delay_s, policy.max_delay_s)
            if retry_after is not None:
                delay = max(delay, retry_after)
            if time.monotonic() + delay >= deadline:
                break
            await asyncio.sleep(delay)
    return record("gave_up", f"gave up after {len(attempts)} attempt(s); last: {last}")


async def write_delivery_record(bucket: Bucket, ref: JobRef, rec: DeliveryRecord) -> None:
    body = rec.model_dump_json(indent=2).encode()
    await with_storage_retries(
        lambda: bucket.put_bytes(webhook_record_key(ref), body, content_type="application/json")
    )


async def notify(
    bucket: Bucket,
    ref: JobRef,
    manifest_bytes: bytes,
    url: str,
    *,
    policy: WebhookPolicy | None = None,
) -> DeliveryRecord | None:
    """Deliver and record. Logs, never raises: a webhook must not fail the job.

    Its lines carry the job through the caller's structlog context (the runner's
    or the tick's), which ``notify_in_background``'s task copies.
    """
    where = redact_url(url)
    try:
        rec = await deliver(
            manifest_bytes, url, os.environ.get(SECRET_ENV), job_id=ref.job_id, policy=policy
        )
        level = log.info if rec.result == "delivered" else log.warning
        # webhook_delivered | webhook_rejected | webhook_gave_up | webhook_no_secret
        level(f"webhook_{rec.result}", url=where, message=rec.message, attempts=len(rec.attempts))
        try:
            await write_delivery_record(bucket, ref, rec)
        except Exception as exc:
            log.warning("webhook_record_not_written", url=where, error=one_line(exc))
        return rec
    except Exception as exc:
        # Not log.exception: the traceback's messages may quote the URL.
        log.error(
            "webhook_delivery_crashed",
            url=where,
            error=one_line(exc),
            traceback=redacted_traceback(exc),
        )
        return None


# -- background delivery in a long-lived worker ----------------------------------------

_pending: set[asyncio.Task[DeliveryRecord | None]] = set()


def notify_in_background(
    bucket: Bucket, ref: JobRef, manifest_bytes: bytes, url: str | None
) -> asyncio.Task[DeliveryRecord | None] | None:
    """Start ``notify`` as a task and return at once (None when the route has no URL).

    Call it after the commit returned. The task keeps running while the worker
    takes its next job; ``drain_notifications`` waits for it before the worker exits.
    """
    if not url:
        return None
    task = asyncio.get_running_loop().create_task(notify(bucket, ref, manifest_bytes, url))
    _pending.add(task)  # a strong reference, or the task may be garbage-collected
    task.add_done_callback(_pending.discard)
    return task


async def drain_notifications(timeout: float | None = None) -> int:
    """Wait for this event loop's pending deliveries; returns how many were still running.

    Each delivery is bounded by its policy's ``max_total_s``; ``timeout`` cuts
    the wait shorter (the rest are cancelled and their records not written).
    """
    loop = asyncio.get_running_loop()
    mine = [t for t in _pending if t.get_loop() is loop and not t.done()]
    if not mine:
        return 0
    _done, late = await asyncio.wait(mine, timeout=timeout)
    for task in late:
        task.cancel()
    for task in late:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if late:
        log.warning("webhooks_cancelled_at_shutdown", count=len(late))
    return len(mine)
