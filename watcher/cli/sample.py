"""`dropgpu sample PATH`: write a real test clip so the quick start needs no media."""

from __future__ import annotations

import time
from pathlib import Path

import ffmpeg

from handlers.media.ffmpeg_run import file_url, run_ffmpeg
from watcher.exceptions import WatcherError


def write_sample_clip(path: Path, *, seconds: float = 10.0) -> Path:
    """A 1280x720 25 fps test pattern with a tone, H.264 + AAC in MP4."""
    if path.suffix.lower() not in (".mp4", ".mov", ".mkv"):
        raise WatcherError(f"{path}: use a .mp4, .mov or .mkv file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a running watcher never sees half a file.
    tmp = path.with_name(f".{path.name}.sample.tmp{path.suffix}")
    picture = ffmpeg.input(f"testsrc2=size=1280x720:rate=25:duration={seconds}", f="lavfi")
    tone = ffmpeg.input(f"sine=frequency=440:sample_rate=48000:duration={seconds}", f="lavfi")
    clip = ffmpeg.output(
        picture,
        tone,
        file_url(tmp),
        **{"c:v": "libx264", "preset": "veryfast", "pix_fmt": "yuv420p"},
        **{"c:a": "aac", "b:a": "128k", "shortest": None, "movflags": "+faststart"},
    )
    run_ffmpeg(clip.get_args(), deadline=time.monotonic() + 120)
    tmp.replace(path)
    return path
