"""The job runner (DESIGN §5): one attempt, from claim to commit.

It orchestrates; the steps live beside it in handlers/jobs/: ``lease`` (the
heartbeat), ``manifests`` (building manifest.json), ``commit`` (fence, manifest,
feed record, claim cleanup), ``failures`` (retry or give up), ``webhooks``.
Bucket I/O happens only in this package: here (the done check, the input's
download, the outputs' upload, the check that the claimed version still exists
before the commit), in ``claims`` (every claim-family key, heartbeats included),
``commit`` (and deleting an unpublished attempt's uploads) and ``webhooks``
(delivery records). Handlers are pure file-to-file functions called in a thread
while the lease heartbeats.

Each attempt uploads into its own version folder (``JobRef.version_dir``). An
attempt that ends without winning the fence (superseded, fenced, lease lost,
failed before its commit) deletes what it uploaded; after the fence, its files
belong to the done marker and are never deleted here.

Every log line of a job carries its route, key, etag, attempt, worker and job id:
``run`` binds them as structlog context variables, which ``asyncio.to_thread``
(the handler) and ``create_task`` (the lease, the webhook) copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import structlog
from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from gpu.device import DeviceInfo
from handlers.contract.keys import MAX_KEY_BYTES, unsafe_rel_reason
from handlers.contract.manifest import ErrorKind, Manifest, OutputInfo, RuntimeInfo, utc_now
from handlers.exceptions import HandlerConfigError, InputError, TransientError
from handlers.jobs.after_success import apply_after_success
from handlers.jobs.claims import defer_claim, drop_claim
from handlers.jobs.commit import commit, current_etag, discard_outputs
from handlers.jobs.failures import record_transient_failure
from handlers.jobs.job_file import (
    JOB_FILE_SUFFIX,
    MAX_JOB_FILE_BYTES,
    JobFile,
    check_source_key,
    parse_job_file,
    validate_params,
)
from handlers.jobs.lease import Lease, LeaseLost
from handlers.jobs.manifests import build_manifest, failed_manifest
from handlers.jobs.outcome import JobOutcome, JobStatus
from handlers.jobs.retry import with_storage_retries
from handlers.jobs.spec import JobSpec, bound_to_job, parse_iso
from handlers.protocol import (
    Handler,
    HandlerContext,
    HandlerParams,
    HandlerResult,
    OutputFile,
    describe,
)
from handlers.registry import get_handler
from infra.hashing import sha256_and_size
from infra.storage.bucket import Bucket, ObjectInfo
from infra.storage.errors import BucketError, ObjectNotFound, PreconditionFailed, UnsafeKeyError
from infra.text import one_line, quoted, redacted_traceback

log: FilteringBoundLogger = structlog.get_logger(__name__)

_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
UPLOAD_CONCURRENCY = 4


class _Superseded(Exception):
    """The claimed version is gone or replaced: nothing to do for this job."""


class _WaitForSources(Exception):
    """A job file's source is not uploaded yet: give the claim back until ``retry_at_ms``."""

    def __init__(self, message: str, retry_at_ms: int) -> None:
        super().__init__(message)
        self.retry_at_ms = retry_at_ms


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What the handler gets: validated params, the input, a job file's sources."""

    params: HandlerParams
    input_path: Path
    sources: dict[str, Path] = field(default_factory=dict)
    # name, key, etag, size of each source as downloaded (the manifest's input.sources)
    records: list[dict[str, Any]] = field(default_factory=list)


class JobRunner:
    """Runs jobs in one worker; keeps per-worker warm state across jobs."""

    def __init__(
        self,
        bucket: Bucket,
        *,
        scratch_root: Path,
        device: DeviceInfo,
        worker_name: str | None = None,
        cache: dict[str, Any] | None = None,
        runtime_extra: Callable[[float], Mapping[str, Any]] | None = None,
    ) -> None:
        self.bucket = bucket
        # Executor facts for the manifest's runtime (e.g. Modal: gpu_type, gpu_seconds,
        # cost_usd), computed from the job's wall seconds when its manifest is built.
        self.runtime_extra = runtime_extra
        self.scratch_root = scratch_root
        self.device = device
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.cache = cache if cache is not None else {}

    async def run(self, job: JobSpec) -> JobOutcome:
        with bound_to_job(job, self.worker_name):
            return await self._run(job)

    async def _run(self, job: JobSpec) -> JobOutcome:
        ref = job.ref
        scratch = self.scratch_root / ref.job_hash / f"attempt-{job.attempt}"
        info = {"job_id": ref.job_id, "input_key": ref.input_key, "attempt": job.attempt}
        lease = Lease(
            self.bucket,
            job.claim_key,
            ttl=job.lease_ttl_seconds,
            interval=job.heartbeat_seconds,
            info=info,
        )
        started_at = utc_now()
        t_start = time.monotonic()
        timings: dict[str, float | None] = {"download_s": None, "process_s": None, "upload_s": None}
        handler_ran = False
        # Output keys this attempt wrote (or may have): deleted unless it wins the fence.
        uploaded: list[str] = []
        committing = False
        inputs: _Inputs | None = None
        try:
            async with lease:
                scratch.mkdir(parents=True, exist_ok=True)
                log.info("job_started", device=self.device.name)
                try:
                    handler = self._check_job(job)
                    await self._check_not_done(job)
                    input_path = await self._download(job, scratch, lease, timings)
                    inputs = await self._prepare(job, handler, input_path, scratch, timings)
                    params = inputs.params
                    handler_ran = True
                    result = await self._process(job, handler, inputs, scratch, lease, timings)
                    lease.check()
                    outputs = await self._upload(job, result.outputs, lease, timings, uploaded)
                    lease.check()
                    manifest = build_manifest(
                        job,
                        "succeeded",
                        device=self.device,
                        worker=self.worker_name,
                        started_at=started_at,
                        timings=timings,
                        params=params.model_dump(mode="json"),
                        handler=(handler.name, handler.version),
                        result=result,
                        outputs=outputs,
                        sources=inputs.records or None,
                    )
                except (InputError, HandlerConfigError) as exc:
                    kind: ErrorKind = "input" if isinstance(exc, InputError) else "config"
                    log.warning("job_failed", error_kind=kind, error=one_line(str(exc)))
                    manifest = failed_manifest(
                        job,
                        kind,
                        str(exc),
                        device=self.device,
                        worker=self.worker_name,
                        started_at=started_at,
                        timings=timings,
                        sources=inputs.records if inputs else None,
                        params=inputs.params.model_dump(mode="json") if inputs else None,
                    )
                await self._check_still_current(job)
                lease.check()
                # No heartbeat may land after the commit deletes the claim.
                await lease.stop()
                manifest = self._with_runtime_extra(manifest, time.monotonic() - t_start)
                # From here the outputs may belong to a won fence: never discarded below.
                committing = True
                outcome = await self._commit(job, manifest, handler_ran)
                if outcome.status is JobStatus.FENCED:
                    await discard_outputs(self.bucket, uploaded)
                return outcome
        except _WaitForSources as exc:  # not an attempt: back to the tick at retry_at
            log.info("job_waiting_for_sources", reason=str(exc))
            try:
                await defer_claim(
                    self.bucket, ref, job.attempt, message=str(exc), retry_at_ms=exc.retry_at_ms
                )
            except BucketError as err:  # the claim expires with its lease instead
                log.warning("job_defer_failed", error=one_line(err))
            return JobOutcome(JobStatus.WAITING, str(exc), handler_ran=False)
        except _Superseded as exc:  # nothing to do: drop the claim
            log.info("job_superseded", reason=str(exc))
            await discard_outputs(self.bucket, uploaded)
            await drop_claim(self.bucket, job.claim_key)
            return JobOutcome(JobStatus.SUPERSEDED, str(exc), handler_ran=handler_ran)
        except LeaseLost as exc:
            # Do not commit: another watcher may be running this job now (another
            # attempt, so its outputs are under another folder than ours).
            log.error("job_lease_lost", error=str(exc))
            await discard_outputs(self.bucket, uploaded)
            return JobOutcome(JobStatus.LEASE_LOST, str(exc), handler_ran=handler_ran)
        except Exception as exc:
            message = one_line(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
            if isinstance(exc, BucketError | OSError | MemoryError | TimeoutError | TransientError):
                log.warning("job_attempt_failed", error=message)
            else:  # unexpected; retried as transient. Not log.exception: URLs get redacted.
                log.error("job_attempt_crashed", error=message, traceback=redacted_traceback(exc))
            if not committing:  # the next attempt uploads to its own folder
                await discard_outputs(self.bucket, uploaded)
            return await self._transient_failure(job, started_at, timings, message, handler_ran)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                scratch.parent.rmdir()  # only when no other attempt uses it

    def _with_runtime_extra(self, manifest: Manifest, wall_s: float) -> Manifest:
        if self.runtime_extra is None:
            return manifest
        try:
            extra = dict(self.runtime_extra(wall_s))
            runtime = RuntimeInfo(**{**manifest.runtime.model_dump(), **extra})
        except Exception as exc:  # cost is informative; it never fails a job
            log.warning("runtime_extra_failed", error=one_line(exc))
            return manifest
        return manifest.model_copy(update={"runtime": runtime})

    # -- steps ---------------------------------------------------------------------

    def _check_job(self, job: JobSpec) -> Handler:
        # Names are shown quoted: a trailing space or a control character must be visible.
        reason = unsafe_rel_reason(job.rel)
        if reason:
            raise InputError(
                f"unsafe object key {quoted(job.ref.input_key)} ({reason}); "
                "rename the file and drop it again"
            )
        if not job.ref.manifest_key_fits():
            raise InputError(
                f"object key too long: the outputs of {quoted(job.ref.input_key)} would pass "
                f"S3's {MAX_KEY_BYTES}-byte key limit; use a shorter name or fewer folders"
            )
        suffix = PurePosixPath(job.rel).suffix.lower()
        handler = get_handler(job.handler)
        if suffix != JOB_FILE_SUFFIX:
            if describe(handler).job_files_only:
                raise InputError(
                    f"route {quoted(job.route)} takes job files only: drop a .json job file "
                    f'({{"dropgpu_job": 1, "source": ...}}) naming '
                    f"{quoted(PurePosixPath(job.rel).name)} as its source"
                )
            if job.extensions and suffix not in job.extensions:
                raise self._unsupported(job)
        elif job.size > MAX_JOB_FILE_BYTES and (
            JOB_FILE_SUFFIX not in job.extensions or describe(handler).job_files_only
        ):
            # Not downloaded to find out: a job file is never that large.
            raise InputError(f"job file too large: {job.size} bytes (limit {MAX_JOB_FILE_BYTES})")
        return handler

    @staticmethod
    def _unsupported(job: JobSpec) -> InputError:
        name = PurePosixPath(job.rel).name
        suffix = PurePosixPath(job.rel).suffix.lower()
        shown = quoted(suffix) if suffix else "(no extension)"
        return InputError(
            f"unsupported file type {shown} for route {quoted(job.route)}: {quoted(name)}; "
            f"accepted: {', '.join(sorted(job.extensions))}"
            + (", or a .json job file" if job.extensions else "")
        )

    @staticmethod
    def _route_params(job: JobSpec, handler: Handler) -> HandlerParams:
        try:
            return handler.Params(**job.params)
        except ValidationError as exc:
            err = exc.errors()[0]
            field_name = ".".join(str(p) for p in err["loc"])
            raise HandlerConfigError(
                f"invalid params for route '{job.route}': {field_name}: {err['msg']}"
            ) from exc

    def _read_job_file(
        self, job: JobSpec, input_path: Path, *, job_files_only: bool
    ) -> JobFile | None:
        """The downloaded input as a job file; None for anything else (media, plain JSON)."""
        if PurePosixPath(job.rel).suffix.lower() != JOB_FILE_SUFFIX:
            return None
        if input_path.stat().st_size > MAX_JOB_FILE_BYTES:
            if JOB_FILE_SUFFIX in job.extensions and not job_files_only:
                return None  # the handler takes .json itself
            raise InputError(
                f"job file too large: {input_path.stat().st_size} bytes "
                f"(limit {MAX_JOB_FILE_BYTES})"
            )
        return parse_job_file(input_path.read_bytes())

    async def _prepare(
        self,
        job: JobSpec,
        handler: Handler,
        input_path: Path,
        scratch: Path,
        timings: dict[str, float | None],
    ) -> _Inputs:
        """Params and inputs for the handler: the route's for media, the job file's for one."""
        info = describe(handler)
        job_file = self._read_job_file(job, input_path, job_files_only=info.job_files_only)
        if job_file is None:
            if info.job_files_only:
                raise InputError(
                    f"route {quoted(job.route)} takes job files only: this .json has no "
                    '"dropgpu_job": 1 at its top level'
                )
            if job.extensions and PurePosixPath(job.rel).suffix.lower() not in job.extensions:
                raise self._unsupported(job)
            return _Inputs(self._route_params(job, handler), input_path)
        if len(job_file.sources) > 1 and info.sources == "one":
            raise InputError(
                f"sources: route {quoted(job.route)} takes one source, this job file names "
                f"{len(job_file.sources)} ({', '.join(job_file.sources)})"
            )
        key = job.ref.input_key
        for name, source_key in job_file.sources.items():
            where = "source" if list(job_file.sources) == ["main"] else f"sources.{name}"
            check_source_key(source_key, where, job_key=key, prefixes=job.source_prefixes)
        params = validate_params(handler.Params, job_file, job.params)
        wanted: dict[str, tuple[str, str]] = {}  # name -> (key, where)
        for name, source_key in job_file.sources.items():
            wanted[name] = (source_key, "source" if name == "main" else f"sources.{name}")
        for ref_key in info.referenced_keys(params):
            check_source_key(ref_key, "referenced key", job_key=key, prefixes=job.source_prefixes)
            wanted.setdefault(ref_key, (ref_key, "referenced key"))
        return await self._download_sources(job, wanted, params, scratch, timings)

    async def _download_sources(
        self,
        job: JobSpec,
        wanted: dict[str, tuple[str, str]],
        params: HandlerParams,
        scratch: Path,
        timings: dict[str, float | None],
    ) -> _Inputs:
        """Find each source (one LIST each), wait for missing ones, GET with If-Match."""
        keys = sorted({k for k, _ in wanted.values()})
        listings = await asyncio.gather(
            *(with_storage_retries(lambda k=k: self.bucket.list(k)) for k in keys)
        )
        found = {
            k: next((o for o in listing.objects if o.key == k), None)
            for k, listing in zip(keys, listings, strict=True)
        }
        missing = [(k, where) for k, where in wanted.values() if found[k] is None]
        if missing:
            self._wait_or_fail(job, *missing[0])
        t0 = time.monotonic()
        paths: dict[str, Path] = {}
        infos: dict[str, ObjectInfo] = {}
        for i, k in enumerate(keys):
            listed = found[k]
            assert listed is not None
            suffix = PurePosixPath(k).suffix
            path = scratch / (f"source-{i}" + (suffix if _SAFE_SUFFIX.fullmatch(suffix) else ""))
            try:
                infos[k] = await with_storage_retries(
                    lambda k=k, path=path, etag=listed.etag: self.bucket.get_to_file(
                        k, path, if_match=etag
                    )
                )
            except (PreconditionFailed, ObjectNotFound) as exc:
                # Retried as an attempt: the next one lists the source's new version.
                raise TransientError(
                    f"source {quoted(k)} changed while the job started; retrying"
                ) from exc
            paths[k] = path
        timings["download_s"] = round((timings.get("download_s") or 0) + time.monotonic() - t0, 3)
        sources = {name: paths[k] for name, (k, _) in wanted.items()}
        records = [
            {"name": name, "key": k, "etag": infos[k].etag, "size": infos[k].size}
            for name, (k, _) in wanted.items()
        ]
        first = next(iter(sources.values()))
        return _Inputs(params, first, sources, records)

    def _wait_or_fail(self, job: JobSpec, key: str, where: str) -> None:
        """Raise _WaitForSources while the route's wait lasts, then InputError naming the key."""
        wait = job.sources_wait_seconds
        deadline = parse_iso(job.last_modified).timestamp() + wait
        now = utc_now().timestamp()
        if now >= deadline:
            raise InputError(
                f"{where}: {quoted(key)} does not exist (waited {wait:.0f} s for it); "
                "upload it, then drop the job file again"
            )
        poll = min(15.0, max(0.5, wait / 4), deadline - now)
        raise _WaitForSources(
            f"{where}: {quoted(key)} does not exist yet", int((now + poll) * 1000) + 1
        )

    async def _check_not_done(self, job: JobSpec) -> None:
        """Stop if another attempt already committed this job (one one-key LIST).

        A tick that listed before a commit can create ``attempt-n`` again after
        that commit deleted the claims. A commit creates the done marker before
        it deletes claims, so once our claim exists the marker, if any, is listed.
        """
        key = job.ref.done_key
        listing = await with_storage_retries(lambda: self.bucket.list(key))
        if any(o.key == key for o in listing.objects):
            raise _Superseded("another attempt already committed this job")

    async def _check_still_current(self, job: JobSpec) -> None:
        """Stop before the fence when the claimed version is gone (one one-key LIST).

        A result for bytes deleted or replaced while the job ran is not published: a
        consumer would get a manifest (and a feed record) for an input that no longer
        exists, or one version's result under the next one's name. Dropped instead,
        like a claim whose input went before its download; the newer bytes are their
        own job. What remains: a change between this LIST and the fence (one request);
        the commit's own check after the fence still keeps a replaced input's manifest.
        """
        etag = await current_etag(self.bucket, job.ref.input_key)
        if etag is None:
            raise _Superseded("input was deleted while the job ran")
        if etag != job.etag:
            raise _Superseded("input was replaced by new bytes while the job ran")

    async def _download(
        self, job: JobSpec, scratch: Path, lease: Lease, timings: dict[str, float | None]
    ) -> Path:
        lease.set_phase("download")
        suffix = PurePosixPath(job.rel).suffix
        # Scratch names come from hashes; only a plain suffix survives, as a hint for ffmpeg.
        input_path = scratch / ("input" + (suffix if _SAFE_SUFFIX.fullmatch(suffix) else ""))
        t0 = time.monotonic()
        try:
            await with_storage_retries(
                lambda: self.bucket.get_to_file(job.ref.input_key, input_path, if_match=job.etag)
            )
        except PreconditionFailed as exc:
            raise _Superseded("input was replaced by new bytes after the claim") from exc
        except ObjectNotFound as exc:
            raise _Superseded("input was deleted after the claim") from exc
        timings["download_s"] = round(time.monotonic() - t0, 3)
        return input_path

    async def _process(
        self,
        job: JobSpec,
        handler: Handler,
        inputs: _Inputs,
        scratch: Path,
        lease: Lease,
        timings: dict[str, float | None],
    ) -> HandlerResult:
        lease.set_phase("process")
        output_dir = scratch / "out"
        work_dir = scratch / "work"
        output_dir.mkdir(exist_ok=True)
        work_dir.mkdir(exist_ok=True)
        ctx = HandlerContext(
            input_path=inputs.input_path,
            output_dir=output_dir,
            work_dir=work_dir,
            params=inputs.params,
            sources=inputs.sources,
            device=self.device.name,
            deadline=time.monotonic() + job.timeout_seconds,
            progress=lease.update,
            cache=self.cache,
            # The job's context variables ride along: to_thread copies them into the thread.
            log=log,
        )
        t0 = time.monotonic()
        try:
            # The handler enforces ctx.deadline itself (ffmpeg is killed); the extra
            # grace here only catches a handler that ignores it.
            result = await asyncio.wait_for(
                asyncio.to_thread(handler.run, ctx), timeout=job.timeout_seconds + 30
            )
        except TimeoutError as exc:
            raise TimeoutError(
                f"handler exceeded the route timeout of {job.timeout_seconds:.0f} s"
            ) from exc
        timings["process_s"] = round(time.monotonic() - t0, 3)
        if not result.outputs:
            raise RuntimeError(f"handler {handler.name} produced no outputs")
        return result

    async def _upload(
        self,
        job: JobSpec,
        outputs: list[OutputFile],
        lease: Lease,
        timings: dict[str, float | None],
        uploaded: list[str],
    ) -> list[OutputInfo]:
        lease.set_phase("upload")
        names = [o.name for o in outputs]
        if len(set(names)) != len(names) or any(not _OUTPUT_NAME.fullmatch(n) for n in names):
            raise RuntimeError(f"handler returned invalid output names: {names}")
        t0 = time.monotonic()
        limit = asyncio.Semaphore(UPLOAD_CONCURRENCY)

        async def upload_one(out: OutputFile) -> OutputInfo:
            async with limit:
                sha256, size = await asyncio.to_thread(sha256_and_size, out.path)
                key = job.ref.output_key(out.name, job.attempt)
                uploaded.append(key)  # before the PUT: a failed one may still have landed
                try:
                    await with_storage_retries(
                        lambda: self.bucket.put_file(key, out.path, content_type=out.content_type)
                    )
                except UnsafeKeyError as exc:
                    # The store refuses this place for good (e.g. a symlink planted in a
                    # folder bucket's outputs/): retrying cannot help, so fail at once.
                    raise InputError(
                        f"cannot write outputs under {quoted(job.ref.output_prefix)}: {exc}"
                    ) from exc
                return OutputInfo(
                    key=key, size=size, sha256=sha256, content_type=out.content_type, role=out.role
                )

        infos = await asyncio.gather(*(upload_one(o) for o in outputs))
        timings["upload_s"] = round(time.monotonic() - t0, 3)
        return list(infos)

    async def _commit(self, job: JobSpec, manifest: Manifest, handler_ran: bool) -> JobOutcome:
        failed = manifest.status == "failed"
        body = manifest.to_json_bytes()
        won = await commit(self.bucket, job.ref, body, failed=failed, notify_url=job.notify_url)
        if not won:  # another attempt committed first: no manifest from this one
            log.warning("job_fenced")
            return JobOutcome(JobStatus.FENCED, handler_ran=handler_ran)
        log.info(
            "job_committed",
            status=manifest.status,
            manifest=job.ref.manifest_key,
            process_s=manifest.timings.process_s,
        )
        if not failed:
            # Only now: the manifest is written (or deliberately skipped), the job is done.
            await apply_after_success(self.bucket, job.ref, job.after_success, job.archive_prefix)
        message = manifest.error.message if manifest.error else ""
        return JobOutcome(JobStatus(manifest.status), message, job.ref.manifest_key, handler_ran)

    async def _transient_failure(
        self,
        job: JobSpec,
        started_at: datetime,
        timings: dict[str, float | None],
        message: str,
        handler_ran: bool,
    ) -> JobOutcome:
        outcome = await record_transient_failure(
            self.bucket,
            job,
            message,
            device=self.device,
            worker=self.worker_name,
            started_at=started_at,
            timings=timings,
        )
        return JobOutcome(outcome.status, outcome.message, outcome.manifest_key, handler_ran)
