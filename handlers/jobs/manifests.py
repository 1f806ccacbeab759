"""Building a job's manifest.json (schema: handlers/contract/manifest.py) from what it did.

Pure: no bucket I/O. The runner builds the manifests of jobs it ran; the tick
and the retry policy build the "gave_up" ones of jobs that will not run again.
"""

from __future__ import annotations

import mimetypes
import socket
from datetime import datetime
from typing import Any, Literal

from gpu.device import DeviceInfo
from handlers.contract.manifest import (
    ErrorInfo,
    ErrorKind,
    HandlerInfo,
    InputInfo,
    Manifest,
    OutputInfo,
    RuntimeInfo,
    SourceInfo,
    Timings,
    iso,
    utc_now,
)
from handlers.exceptions import HandlerConfigError
from handlers.jobs.after_success import manifest_record
from handlers.jobs.spec import JobSpec
from handlers.protocol import HandlerResult
from handlers.registry import get_handler
from infra.text import one_line
from infra.version import dropgpu_version

# Fields of the manifest's ``input`` the runner owns; a handler's media facts cannot override them.
_RESERVED_INPUT_FIELDS = (
    "key", "etag", "size", "content_type", "last_modified", "sources", "after_success",
)  # fmt: skip


def build_manifest(
    job: JobSpec,
    status: Literal["succeeded", "failed"],
    *,
    device: DeviceInfo | None,
    worker: str,
    started_at: datetime | None,
    timings: dict[str, float | None],
    params: dict[str, Any],
    handler: tuple[str, str],
    result: HandlerResult | None = None,
    outputs: list[OutputInfo] | None = None,
    error: ErrorInfo | None = None,
    sources: list[dict[str, Any]] | None = None,
) -> Manifest:
    media = dict(result.media) if result else {}
    for reserved in _RESERVED_INPUT_FIELDS:
        media.pop(reserved, None)
    if sources:  # a job file's media as downloaded (DESIGN §10)
        media["sources"] = [SourceInfo(**s).model_dump() for s in sources]
    planned = manifest_record(job.ref, job.after_success, job.archive_prefix)
    if status == "succeeded" and planned is not None:
        media["after_success"] = planned
    runtime: dict[str, Any] = dict(result.runtime) if result else {}
    return Manifest(
        status=status,
        job_id=job.ref.job_id,
        route=job.route,
        handler=HandlerInfo(name=handler[0], version=handler[1]),
        params=params,
        input=InputInfo(
            key=job.ref.input_key,
            etag=job.etag,
            size=job.size,
            content_type=mimetypes.guess_type(job.rel)[0],
            last_modified=job.last_modified,
            **media,
        ),
        outputs=outputs or [],
        result=dict(result.summary) if result else {},
        error=error,
        attempts=job.attempt,
        timings=Timings(
            claimed_at=job.claimed_at,
            started_at=iso(started_at),
            finished_at=iso(utc_now()) or "",
            **timings,
        ),
        runtime=RuntimeInfo(
            host=socket.gethostname(),
            device=device.name if device else None,
            gpu_name=device.gpu_name if device else None,
            dropgpu_version=dropgpu_version(),
            worker=worker,
            **runtime,
        ),
    )


def failed_manifest(
    job: JobSpec,
    kind: ErrorKind,
    message: str,
    *,
    device: DeviceInfo | None,
    worker: str,
    started_at: datetime | None = None,
    timings: dict[str, float | None] | None = None,
    sources: list[dict[str, Any]] | None = None,
    params: dict[str, Any] | None = None,
) -> Manifest:
    """A failed manifest; names the handler even when it cannot be loaded.

    ``params``: the effective params once known (a job file's, merged); else the route's.
    """
    try:
        handler = get_handler(job.handler)
        ident = (handler.name, handler.version)
    except HandlerConfigError:
        ident = (job.handler, "unknown")
    return build_manifest(
        job,
        "failed",
        device=device,
        worker=worker,
        started_at=started_at,
        timings=timings or {},
        params=job.params if params is None else params,
        handler=ident,
        error=ErrorInfo(kind=kind, message=one_line(message, 1000)),
        sources=sources,
    )


def gave_up_manifest(
    job: JobSpec,
    attempts: int,
    last_error: str,
    *,
    device: DeviceInfo | None,
    worker: str,
    started_at: datetime | None = None,
    timings: dict[str, float | None] | None = None,
) -> Manifest:
    """The failed manifest of a job that used up its attempts: "gave up after n attempts: ..."."""
    return failed_manifest(
        job,
        "gave_up",
        f"gave up after {attempts} attempts: {last_error}",
        device=device,
        worker=worker,
        started_at=started_at,
        timings=timings,
    )
