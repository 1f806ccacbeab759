"""Routes config -> what the Modal app deploys. Pure functions, no Modal import.

infra/deploy/modal_app.py builds Modal objects from these settings; `dropgpu deploy`
validates them before calling `modal deploy`, and the tests check them offline.

Rules worth knowing (docs/deploy.md explains them to users):
- Retries: Modal's ``retries`` is 0 everywhere. dropgpu's attempts (claims,
  backoff, ``max_attempts``, the gave_up manifest) are the one source of truth;
  a Modal-level retry would run an attempt the bucket state knows nothing about.
- Timeouts: a worker's Modal timeout is the route's handler timeout plus the
  runner's grace and ``[modal] timeout_margin_seconds`` (download, upload,
  commit); it must fit Modal's 24 h limit.
- Lease: on Modal the claim is written by the watcher and first heartbeated by
  the worker after its container starts, so the lease must outlive a cold
  start. Containers get ``startup_timeout`` = half the lease: a container that
  cannot start in time fails, and its claim expires and is retried, instead of
  a late worker racing a retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from handlers.protocol import ModalImage
from handlers.registry import handler_info
from watcher.config import Config, RouteConfig, WatchSettings
from watcher.exceptions import ConfigError

MODAL_MAX_TIMEOUT_S = 86_400
# JobRunner gives a handler this much beyond the route timeout before giving up on it.
RUNNER_GRACE_S = 30
MODEL_DIR = "/models"
SCRATCH_DIR = "/tmp/dropgpu-scratch"
REMOTE_CONFIG_PATH = "/root/dropgpu.toml"
# The routes file the app module reads at import, locally and in its containers.
CONFIG_ENV = "DROPGPU_CONFIG"
# Every key the bucket Secret must hold; Modal checks them at deploy time.
REQUIRED_SECRET_KEYS: tuple[str, ...] = (
    "DROPGPU_BUCKET",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
)
PYTHON_VERSION = "3.11"
LOCAL_PACKAGES: tuple[str, ...] = ("handlers", "watcher", "gpu", "infra")

ImageName = Literal["watcher"] | ModalImage


@dataclass(frozen=True, slots=True)
class ImageRecipe:
    name: ImageName
    pip: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


# The watcher only lists, claims and spawns: no torch, demucs or ffmpeg binary,
# so its container starts in seconds. Handler modules are imported (for their
# extensions and params), so they must not import torch at module level; numpy
# is here because several handler modules import it at the top.
# Pinned (the versions this repository's tests run): a rebuild gives the same image.
_WATCHER_PIP = (
    "aiobotocore==3.10.0",
    "structlog==26.1.0",
    "pydantic==2.14.4",
    "jsonschema==4.26.0",
    "ffmpeg-python==0.2.0",
    "numpy==2.4.6",
)
# imageio-ffmpeg ships a static ffmpeg with libx264 and NVENC; gpu/encoders.py
# probes NVENC at run time and falls back to libx264 when the driver lacks it.
# Its version fixes the ffmpeg build and so the NVENC driver floor (bench/modal_smoke.py
# prints whether NVENC loads on Modal's driver).
# librosa: beat tracking for highlights and render (imported only by a job that tracks beats).
_FFMPEG_PIP = (*_WATCHER_PIP, "imageio-ffmpeg==0.8.1", "librosa==0.11.0")
# The PyPI torch wheel for Linux bundles CUDA; versions are the ones tested here.
# dlib-bin + face-recognition-models: the faces route's CPU detector, landmarks and
# descriptor, weights inside the package (no model store needed).
_TORCH_PIP = (
    *_FFMPEG_PIP,
    "torch==2.13.0",
    "demucs==4.1.0",
    "pyyaml==6.0.4",
    "dlib-bin==20.0.1.post1",
    "face-recognition-models==0.3.0",
)
# Model caches point into the Volume so whatever path demucs takes lands there.
_MODEL_ENV = {
    "DROPGPU_MODEL_DIR": f"{MODEL_DIR}/store",
    "TORCH_HOME": f"{MODEL_DIR}/torch",
    "HF_HOME": f"{MODEL_DIR}/hf",
}
_COMMON_ENV = {"DROPGPU_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
# GPU images: the container runtime mounts the driver's video libraries (libnvidia-encode,
# libnvcuvid: NVENC/NVDEC) only when "video" is among the capabilities.
_GPU_ENV = {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility,video", "NVIDIA_VISIBLE_DEVICES": "all"}

IMAGES: dict[str, ImageRecipe] = {
    "watcher": ImageRecipe("watcher", _WATCHER_PIP, dict(_COMMON_ENV)),
    "ffmpeg": ImageRecipe("ffmpeg", _FFMPEG_PIP, {**_COMMON_ENV, **_MODEL_ENV, **_GPU_ENV}),
    "torch": ImageRecipe("torch", _TORCH_PIP, {**_COMMON_ENV, **_MODEL_ENV, **_GPU_ENV}),
}


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """One route's worker class on Modal."""

    route: str
    class_name: str
    image: ImageName
    gpu: str | None  # Modal GPU spec, None for a CPU container
    max_containers: int
    scaledown_window: int
    timeout: int
    startup_timeout: int
    retries: int = 0
    cpu: float = 2.0  # physical cores reserved (Modal's default is 0.125)
    memory: int = 4_096  # MiB reserved


# CPU and memory per container, sized for the CPU fallback (libx264, filters, demux and
# mux run on the CPU even beside NVENC; demucs on the CPU when no GPU is attached).
RESOURCES: dict[str, tuple[float, int]] = {
    "watcher": (1.0, 1_024),
    "ffmpeg": (4.0, 8_192),
    "torch": (4.0, 16_384),
}
# A route with gpu = "none" does all its work on the CPU.
CPU_ONLY_RESOURCES: tuple[float, int] = (8.0, 16_384)


@dataclass(frozen=True, slots=True)
class Schedule:
    kind: Literal["cron", "period"]
    cron: str | None = None
    period_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class DeploySettings:
    app_name: str
    secret_name: str
    required_secret_keys: tuple[str, ...]
    volume_name: str
    model_dir: str
    schedule: Schedule
    watcher_timeout: int
    watcher_retries: int
    lease_ttl_seconds: float
    heartbeat_seconds: float
    models: tuple[str, ...]
    # A spawned claim no worker has heartbeaten yet is queued, not dead, until this.
    start_deadline_seconds: float
    workers: dict[str, WorkerSettings]


def worker_class_name(route: str) -> str:
    """The global Python (and Modal) name of a route's worker class."""
    # Route names are [a-z0-9][a-z0-9_-]*; '-' is not valid in an identifier.
    return "Worker_" + route.replace("-", "_")


def effective_config(config: Config) -> Config:
    """The config as the deployment runs it: the lease TTL comes from ``[modal]``."""
    watch = WatchSettings(
        **{**config.watch.model_dump(), "lease_ttl_seconds": config.modal.lease_ttl_seconds}
    )
    return config.model_copy(update={"watch": watch})


def route_gpu(config: Config, route: RouteConfig) -> str | None:
    """The route's ``gpu``, else the ``[modal]`` default for its handler's declared GPU kind."""
    if route.gpu == "none":
        return None
    if route.gpu:
        return route.gpu
    kind = handler_info(route.handler).gpu_kind
    return config.modal.audio_gpu if kind == "audio" else config.modal.video_gpu


def route_image(route: RouteConfig) -> ImageName:
    """The route's ``modal_image``, else the image its handler declares.

    A custom "module:attr" handler that declares none may need anything: it gets
    the full (torch) image.
    """
    if route.modal_image:
        return route.modal_image
    return handler_info(route.handler).modal_image


def worker_settings(config: Config, route: RouteConfig) -> WorkerSettings:
    modal = config.modal
    where = f"{config.source}: routes.{route.name}"
    timeout = int(route.timeout_seconds) + RUNNER_GRACE_S + modal.timeout_margin_seconds
    if timeout > MODAL_MAX_TIMEOUT_S:
        raise ConfigError(
            f"{where}: timeout_seconds {route.timeout_seconds:.0f} + {RUNNER_GRACE_S} s grace + "
            f"[modal] timeout_margin_seconds {modal.timeout_margin_seconds} exceeds Modal's "
            f"{MODAL_MAX_TIMEOUT_S} s limit; lower one of them"
        )
    image = route_image(route)
    gpu = route_gpu(config, route)
    cpu, memory = RESOURCES[image] if gpu else CPU_ONLY_RESOURCES
    return WorkerSettings(
        route=route.name,
        class_name=worker_class_name(route.name),
        image=image,
        gpu=gpu,
        cpu=cpu,
        memory=memory,
        max_containers=route.max_containers or modal.max_containers,
        scaledown_window=route.scaledown_window_seconds or modal.scaledown_window_seconds,
        timeout=timeout,
        startup_timeout=max(60, int(modal.lease_ttl_seconds / 2)),
        retries=0,
    )


def deploy_settings(config: Config) -> DeploySettings:
    """Everything the Modal app needs, validated; ConfigError is one readable line."""
    modal = config.modal
    effective = effective_config(config)
    if effective.watch.heartbeat_seconds * 2 > effective.watch.lease_ttl_seconds:
        raise ConfigError(  # cannot happen with ttl/4 heartbeats; guards a future change
            f"{config.source}: modal: heartbeats every {effective.watch.heartbeat_seconds} s "
            "do not fit twice in the lease"
        )
    if modal.start_deadline_seconds < modal.lease_ttl_seconds + 120:
        raise ConfigError(
            f"{config.source}: modal: start_deadline_seconds ({modal.start_deadline_seconds:g}) "
            f"must be at least lease_ttl_seconds + 120 ({modal.lease_ttl_seconds + 120:g})"
        )
    workers: dict[str, WorkerSettings] = {}
    names: dict[str, str] = {}
    for route in config.enabled_routes():
        ws = worker_settings(config, route)
        if ws.class_name in names:
            raise ConfigError(
                f"{config.source}: routes {names[ws.class_name]!r} and {route.name!r} map to the "
                f"same Modal class {ws.class_name}; rename one ('-' and '_' are the same there)"
            )
        names[ws.class_name] = route.name
        workers[route.name] = ws
    schedule = (
        Schedule("period", period_seconds=modal.period_seconds)
        if modal.period_seconds
        else Schedule("cron", cron=modal.cron)
    )
    return DeploySettings(
        app_name=modal.app_name,
        secret_name=modal.secret_name,
        required_secret_keys=REQUIRED_SECRET_KEYS,
        volume_name=modal.volume_name,
        model_dir=MODEL_DIR,
        schedule=schedule,
        watcher_timeout=modal.watcher_timeout_seconds,
        watcher_retries=0,
        lease_ttl_seconds=effective.watch.lease_ttl_seconds,
        heartbeat_seconds=effective.watch.heartbeat_seconds,
        models=modal.models,
        start_deadline_seconds=modal.start_deadline_seconds,
        workers=workers,
    )
