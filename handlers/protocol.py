"""The handler protocol: a pure function from a local file to local files.

Handlers do no bucket I/O. The job runner downloads the input, calls
``handler.run(ctx)``, then uploads what the result lists and commits the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import structlog
from pydantic import BaseModel, ConfigDict

ProgressFn = Callable[[float, str], None]
"""progress(fraction 0..1, phase) — forwarded to the claim heartbeat."""


class HandlerParams(BaseModel):
    """Base for every handler's parameter model: unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(slots=True)
class HandlerContext:
    input_path: Path  # the downloaded input; read-only for the handler
    output_dir: Path  # write outputs here; the runner uploads what the result lists
    work_dir: Path  # scratch space, removed after the job
    params: HandlerParams  # already validated against handler.Params
    device: str  # "cpu" or "cuda:0"
    deadline: float  # time.monotonic() value by which the handler must finish
    progress: ProgressFn = lambda fraction, phase: None
    # Per-worker-process state that survives across jobs (warm models, probes).
    cache: dict[str, Any] = field(default_factory=dict)
    log: Any = field(default_factory=structlog.get_logger)


@dataclass(frozen=True, slots=True)
class OutputFile:
    name: str  # file name under outputs/<route>/<rel>/ (no slashes)
    path: Path  # where the handler wrote it
    role: str  # e.g. "video", "stem:vocals", "waveform", "poster"
    content_type: str


@dataclass(slots=True)
class HandlerResult:
    outputs: list[OutputFile]
    # Media facts of the input (duration_s, width, height, fps, codecs, ...),
    # merged into the manifest's ``input`` object.
    media: dict[str, Any] = field(default_factory=dict)
    # Facts about how the work ran (encoder chosen, hw path), merged into ``runtime``.
    runtime: dict[str, Any] = field(default_factory=dict)
    # Handler-specific summary for the manifest's ``result`` object.
    summary: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Handler(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    Params: ClassVar[type[HandlerParams]]
    # Lower-case extensions (with the dot) a route accepts by default.
    extensions: ClassVar[frozenset[str]]

    def run(self, ctx: HandlerContext) -> HandlerResult: ...
