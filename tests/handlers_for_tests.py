"""Handlers used only by tests: they count their own executions on disk.

Counting executions (not manifests) is what proves exactly-once: every run
creates a uniquely named file in ``counter_dir``, from any process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from handlers.exceptions import InputError, TransientError
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile


class CountingParams(HandlerParams):
    counter_dir: str
    sleep_s: float = 0.0
    # Raise TransientError on the first N executions for an input.
    fail_times: int = 0
    # Inputs whose content starts with this prefix are rejected as input errors.
    reject_prefix: str = "REJECT"


def executions(counter_dir: Path, input_bytes: bytes | None = None) -> int:
    if not counter_dir.exists():
        return 0
    if input_bytes is None:
        return len(list(counter_dir.iterdir()))
    tag = hashlib.sha256(input_bytes).hexdigest()[:16]
    return len(list(counter_dir.glob(f"{tag}-*")))


class CountingHandler:
    name: ClassVar[str] = "counting"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type[HandlerParams]] = CountingParams
    extensions: ClassVar[frozenset[str]] = frozenset({".bin", ".mp4", ".wav"})

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params: CountingParams = ctx.params  # type: ignore[assignment]
        data = ctx.input_path.read_bytes()
        tag = hashlib.sha256(data).hexdigest()[:16]
        counter = Path(params.counter_dir)
        counter.mkdir(parents=True, exist_ok=True)
        previous = len(list(counter.glob(f"{tag}-*")))
        (counter / f"{tag}-{os.getpid()}-{uuid.uuid4().hex}").write_text(str(ctx.input_path))
        ctx.cache["runs"] = ctx.cache.get("runs", 0) + 1
        end = time.monotonic() + params.sleep_s
        while time.monotonic() < end:
            ctx.progress(1 - (end - time.monotonic()) / max(params.sleep_s, 1e-9), "sleeping")
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        if data.startswith(params.reject_prefix.encode()):
            raise InputError("test input rejected: starts with the reject marker")
        if previous < params.fail_times:
            raise TransientError(f"injected transient failure {previous + 1}")
        out = ctx.output_dir / "copy.bin"
        shutil.copyfile(ctx.input_path, out)
        return HandlerResult(
            outputs=[OutputFile("copy.bin", out, "copy", "application/octet-stream")],
            media={"bytes": len(data)},
            summary={"worker_runs": ctx.cache["runs"]},
        )


class Segment(HandlerParams):
    source: str = "main"
    speed: float = Field(default=1.0, gt=0)


class SourcesParams(HandlerParams):
    label: str = "route"
    segments: list[Segment] = Field(default_factory=list)
    # A bucket key the params name (like render's overlay image): downloaded too.
    extra_key: str | None = None
    fail: bool = False


class SourcesHandler:
    """Takes job files with several sources; writes what it got as sources.json."""

    name: ClassVar[str] = "sources"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type[HandlerParams]] = SourcesParams
    extensions: ClassVar[frozenset[str]] = frozenset({".bin"})
    sources: ClassVar[str] = "many"

    @staticmethod
    def referenced_keys(params: HandlerParams) -> list[str]:
        extra = params.extra_key  # type: ignore[attr-defined]
        return [extra] if extra else []

    def run(self, ctx: HandlerContext) -> HandlerResult:
        if ctx.params.fail:  # type: ignore[attr-defined]
            raise InputError("asked to fail")
        got = {name: path.read_bytes().decode() for name, path in ctx.sources.items()}
        out = ctx.output_dir / "sources.json"
        out.write_text(json.dumps({"sources": got, "input": ctx.input_path.read_bytes().decode()}))
        return HandlerResult(outputs=[OutputFile("sources.json", out, "data", "application/json")])


class JobFilesOnlyHandler(SourcesHandler):
    name: ClassVar[str] = "job-files-only"
    job_files_only: ClassVar[bool] = True
