"""The handler protocol: a pure function from a local file to local files.

Handlers do no bucket I/O. The job runner downloads the input, calls
``handler.run(ctx)``, then uploads what the result lists and commits the manifest.

A handler also describes itself, so nothing else in the system names it: which
files it takes (``extensions``), what it needs on Modal (``modal_image``,
``gpu_kind``), which models a job needs (``required_models``) and, for a
built-in, its default routes (``default_routes``). Only the members of
:class:`Handler` are required; :func:`describe` fills in the optional ones with
the defaults of :class:`HandlerInfo`. docs/handlers.md is the guide.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, get_args, runtime_checkable

import structlog
from pydantic import BaseModel, ConfigDict
from structlog.typing import FilteringBoundLogger

from handlers.exceptions import HandlerConfigError

ProgressFn = Callable[[float, str], None]
"""progress(fraction 0..1, phase) — forwarded to the claim heartbeat."""

ModalImage = Literal["ffmpeg", "torch"]
"""The Modal worker image: ffmpeg only, or ffmpeg + torch + demucs (infra/deploy/settings.py)."""

GpuKind = Literal["video", "audio"]
"""Which ``[modal]`` default GPU a route gets: ``video_gpu`` (NVENC) or ``audio_gpu``."""

RouteDefaults = Mapping[str, Mapping[str, Any]]
"""Default routes of a built-in handler: route name -> params (``{}``: the Params defaults)."""


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
    # A job file's media (DESIGN §10), downloaded: each of its ``sources`` by its name
    # there (a single ``source`` is named "main"), and each bucket key the params
    # reference (``referenced_keys``) by that key. ``input_path`` is the first source.
    # Empty for a plain media input.
    sources: Mapping[str, Path] = field(default_factory=dict)
    # Per-worker-process state that survives across jobs (warm models, probes).
    cache: dict[str, Any] = field(default_factory=dict)
    # infra/log.py configures structlog with a filtering bound logger.
    log: FilteringBoundLogger = field(default_factory=structlog.get_logger)


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
    """What every handler has; the runner calls ``run`` in a worker thread.

    Optional members, read through :func:`describe` (defaults in :class:`HandlerInfo`):
    ``modal_image``, ``gpu_kind``, ``default_routes`` (class attributes) and
    ``required_models(params) -> list[str]`` (a method). A handler may also have
    ``warm_up(cache, device, params)``, which a Modal container calls once before
    its first job.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    Params: ClassVar[type[HandlerParams]]
    # Lower-case extensions (with the dot) a route accepts by default.
    extensions: ClassVar[frozenset[str]]

    def run(self, ctx: HandlerContext) -> HandlerResult: ...


def protocol_problem(obj: object) -> str | None:
    """Why ``obj`` (a handler class or instance) does not implement :class:`Handler`, or None.

    Reads attributes only: a route's ``"module:Attribute"`` is checked before the
    registry instantiates anything, so a config naming an arbitrary class (say
    ``subprocess:Popen``) is refused without running its constructor.
    """
    members = {m: getattr(obj, m, None) for m in ("name", "version", "Params", "extensions", "run")}
    missing = [m for m, value in members.items() if value is None]
    if missing:
        return f"has no {', '.join(repr(m) for m in missing)}"
    for member in ("name", "version"):
        if not isinstance(members[member], str) or not members[member]:
            return f"its {member!r} must be a non-empty string"
    params = members["Params"]
    if not (isinstance(params, type) and issubclass(params, HandlerParams)):
        return "its 'Params' must be a subclass of handlers.protocol.HandlerParams"
    extensions = members["extensions"]
    if not isinstance(extensions, frozenset | set) or not all(
        isinstance(ext, str) for ext in extensions
    ):
        return "its 'extensions' must be a frozenset of extensions like '.mp4'"
    if not callable(members["run"]):
        return "its 'run' must be a method"
    return None


def no_models(params: HandlerParams) -> list[str]:
    """The ``required_models`` of a handler that declares none."""
    return []


def no_keys(params: HandlerParams) -> list[str]:
    """The ``referenced_keys`` of a handler whose params name no bucket objects."""
    return []


SourceCount = Literal["one", "many"]
"""How many media a job file may name for a handler: one ``source``, or ``sources``."""


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """A handler's self-description, optional members filled in with these defaults.

    Each field is an optional member of the same name on the handler class.
    """

    # A custom handler may import anything: by default it gets the full image.
    modal_image: ModalImage = "torch"
    gpu_kind: GpuKind = "video"
    # Only built-in handlers (handlers/registry.py) have default routes.
    default_routes: RouteDefaults = field(default_factory=dict)
    # The model names (as in the model store) a job with these params needs.
    required_models: Callable[[HandlerParams], list[str]] = no_models
    # Job files (DESIGN §10): how many sources a job may name, whether the route takes
    # only job files (render: an edit decision list is nothing without one), and which
    # bucket keys the params name that must be downloaded too (e.g. an overlay image).
    sources: SourceCount = "one"
    job_files_only: bool = False
    referenced_keys: Callable[[HandlerParams], list[str]] = no_keys


_OPTIONAL = tuple(f.name for f in fields(HandlerInfo))


def describe(handler: Handler) -> HandlerInfo:
    """``handler``'s self-description; a declared value of the wrong kind is a config error."""
    declared = {name: getattr(handler, name) for name in _OPTIONAL if hasattr(handler, name)}
    info = HandlerInfo(**declared)
    where = f"handler {handler.name!r}"
    if info.modal_image not in get_args(ModalImage):
        raise HandlerConfigError(
            f"{where}: modal_image must be one of {get_args(ModalImage)}, not {info.modal_image!r}"
        )
    if info.gpu_kind not in get_args(GpuKind):
        raise HandlerConfigError(
            f"{where}: gpu_kind must be one of {get_args(GpuKind)}, not {info.gpu_kind!r}"
        )
    if not callable(info.required_models):
        raise HandlerConfigError(f"{where}: required_models must be a method")
    if not callable(info.referenced_keys):
        raise HandlerConfigError(f"{where}: referenced_keys must be a method")
    if info.sources not in get_args(SourceCount):
        raise HandlerConfigError(
            f"{where}: sources must be one of {get_args(SourceCount)}, not {info.sources!r}"
        )
    if not isinstance(info.job_files_only, bool):
        raise HandlerConfigError(f"{where}: job_files_only must be true or false")
    routes = info.default_routes
    if not isinstance(routes, Mapping) or not all(
        isinstance(name, str) and isinstance(params, Mapping) for name, params in routes.items()
    ):
        raise HandlerConfigError(f"{where}: default_routes must map route names to params")
    return info
