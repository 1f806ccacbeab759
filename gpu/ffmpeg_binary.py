"""Which ffmpeg binary dropgpu runs, found once per process.

Order: ``DROPGPU_FFMPEG`` (an explicit path or command name), then ``ffmpeg`` on
PATH (a distro or CUDA-enabled build the operator installed on purpose), then the
static build bundled by imageio-ffmpeg (has libx264 and NVENC; no ffprobe, which
is why dropgpu probes media with ffmpeg itself).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import structlog

from gpu.exceptions import FfmpegNotFoundError

log = structlog.get_logger(__name__)

_INSTALL_HINT = "pip install imageio-ffmpeg or install ffmpeg (e.g. apt-get install ffmpeg)"


def _resolve(candidate: str) -> str | None:
    # A bare name is looked up on PATH; a path must be an executable file.
    if os.sep in candidate or (os.altsep and os.altsep in candidate):
        path = Path(candidate).expanduser()
        return str(path.resolve()) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(candidate)


@cache
def ffmpeg_exe() -> str:
    """Absolute path of the ffmpeg binary to run (cached for the process)."""
    forced = os.environ.get("DROPGPU_FFMPEG", "").strip()
    if forced:
        exe = _resolve(forced)
        if exe is None:
            raise FfmpegNotFoundError(
                f"DROPGPU_FFMPEG={forced!r} is not an executable ffmpeg; "
                f"unset it, or {_INSTALL_HINT}"
            )
        log.debug("ffmpeg_binary", source="DROPGPU_FFMPEG", path=exe)
        return exe
    system = shutil.which("ffmpeg")
    if system:
        log.debug("ffmpeg_binary", source="PATH", path=system)
        return system
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            exe = imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError:  # imageio-ffmpeg installed without its binary
            exe = None
        if exe and Path(exe).is_file():
            log.debug("ffmpeg_binary", source="imageio-ffmpeg", path=exe)
            return exe
    raise FfmpegNotFoundError(f"no ffmpeg binary found: {_INSTALL_HINT}")


def _ffmpeg_query(flag: str) -> str | None:
    """stdout of ``ffmpeg <flag>`` (e.g. ``-version``), or None (logged) when it cannot run."""
    exe = ffmpeg_exe()
    try:
        return subprocess.run(
            [exe, "-hide_banner", "-nostdin", flag],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            check=False,
        ).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning(f"ffmpeg_{flag.lstrip('-')}_failed", path=exe, error=str(exc))
        return None


@cache
def ffmpeg_version() -> str:
    """Version string of :func:`ffmpeg_exe`, e.g. ``"n7.1"`` or ``"6.1.1-3ubuntu5"``."""
    out = _ffmpeg_query("-version")
    if out is None:
        return "unknown"
    first = out.splitlines()[0] if out else ""
    # "ffmpeg version n7.1-... Copyright (c) ..."
    parts = first.split()
    if len(parts) >= 3 and parts[0] == "ffmpeg" and parts[1] == "version":
        return parts[2]
    return first.strip() or "unknown"


@cache
def ffmpeg_filters() -> frozenset[str]:
    """Names of the filters :func:`ffmpeg_exe` was built with (e.g. ``zscale`` needs libzimg)."""
    out = _ffmpeg_query("-filters")
    if out is None:
        return frozenset()
    # Lines look like " TS bwdif             V->V       Deinterlace the input image."
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and "->" in parts[2]:
            names.add(parts[1])
    return frozenset(names)


def clear_cache() -> None:
    """Forget the cached binary, version and filters (tests that change DROPGPU_FFMPEG)."""
    ffmpeg_exe.cache_clear()
    ffmpeg_version.cache_clear()
    ffmpeg_filters.cache_clear()
