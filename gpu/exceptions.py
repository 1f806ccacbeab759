"""Errors raised by the gpu package (device, ffmpeg binary, hardware paths)."""

from __future__ import annotations

from infra.errors import DropgpuError


class GpuError(DropgpuError, RuntimeError):
    """Base class for errors raised by the gpu package."""


class FfmpegNotFoundError(GpuError):
    """No usable ffmpeg binary: neither DROPGPU_FFMPEG, PATH nor imageio-ffmpeg has one."""


class ModelStoreError(GpuError):
    """Base class for model store problems (missing, unreadable, unreachable hub)."""


class ModelNotFoundError(ModelStoreError):
    """The named model is in none of the store's locations; the message says how to fix it."""


class ModelLoadError(ModelStoreError):
    """The model files exist but cannot be loaded (bad checksum, truncated, wrong layout)."""


class ModelHubUnreachableError(ModelStoreError):
    """`dropgpu models pull` could not download from the model hub (offline, blocked, 404)."""
