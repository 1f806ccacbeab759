"""Errors raised by the gpu package (device, ffmpeg binary, hardware paths)."""

from __future__ import annotations


class GpuError(RuntimeError):
    """Base class for errors raised by the gpu package."""


class FfmpegNotFoundError(GpuError):
    """No usable ffmpeg binary: neither DROPGPU_FFMPEG, PATH nor imageio-ffmpeg has one."""
