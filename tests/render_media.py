"""Media for the render tests: markers whose place in the output frame can be measured.

Made with the bundled ffmpeg directly (as tests/media.py does), tiny and short.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gpu.ffmpeg_binary import ffmpeg_exe
from handlers.protocol import HandlerContext, HandlerParams
from tests.handler_context import handler_context
from tests.media import _ffmpeg


def marker_video(
    path: Path,
    seconds: float = 3,
    size: tuple[int, int] = (320, 180),
    box: tuple[int, int, int, int] = (150, 80, 20, 20),
    *,
    flash_at: float | None = None,
    beep_at: float | None = None,
) -> Path:
    """Black frames with a white box (x, y, w, h); optionally a white flash (whole frame,
    0.1 s) and a 1 kHz beep (0.1 s) at the given times, else a quiet 440 Hz tone."""
    w, h = size
    x, y, bw, bh = box
    vf = f"drawbox=x={x}:y={y}:w={bw}:h={bh}:color=white:t=fill"
    if flash_at is not None:
        window = f"between(t,{flash_at},{flash_at + 0.1})"
        vf += f",drawbox=x=0:y=0:w={w}:h={h}:color=white:t=fill:enable='{window}'"
    if beep_at is not None:
        beep = f"if(between(t,{beep_at},{beep_at + 0.1}),0.8*sin(2*PI*1000*t),0)"
        audio = f"aevalsrc='{beep}':s=48000:d={seconds}"
    else:
        audio = f"aevalsrc='0.1*sin(2*PI*440*t)':s=48000:d={seconds}"
    _ffmpeg(
        [
            *("-f", "lavfi", "-i", f"color=black:s={w}x{h}:r=30:d={seconds},{vf}"),
            *("-f", "lavfi", "-i", audio),
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "15"),
            *("-c:a", "aac", "-shortest", str(path)),
        ]
    )
    return Path(path)


def png(path: Path, size: tuple[int, int] = (40, 40), colour: str = "red") -> Path:
    _ffmpeg(["-f", "lavfi", "-i", f"color={colour}:s={size[0]}x{size[1]}", "-frames:v", "1",
             str(path)])  # fmt: skip
    return Path(path)


def frame_at(path: Path, t: float, size: tuple[int, int], pix_fmt: str = "gray") -> np.ndarray:
    """The output frame shown at ``t`` seconds, as an array (h, w[, 3])."""
    argv = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-ss", f"{t:.3f}", "-i", str(path),
            "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", pix_fmt, "pipe:1"]  # fmt: skip
    raw = subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout
    w, h = size
    shape = (h, w) if pix_fmt == "gray" else (h, w, 3)
    return np.frombuffer(raw, dtype=np.uint8)[: w * h * (1 if pix_fmt == "gray" else 3)].reshape(
        shape
    )


def audio_pcm(path: Path, rate: int = 8000) -> np.ndarray:
    argv = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:a:0",
            "-ac", "1", "-ar", str(rate), "-f", "f32le", "pipe:1"]  # fmt: skip
    raw = subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(raw, dtype=np.float32)


def bright_centre_x(frame: np.ndarray, threshold: int = 128) -> float:
    """Mean x of the bright pixels, as a fraction of the frame width."""
    xs = np.nonzero(frame > threshold)[1]
    assert len(xs), "no bright pixels in the frame"
    return float(xs.mean() + 0.5) / frame.shape[1]


def render_context(
    job_dir: Path, sources: Mapping[str, Path], params: HandlerParams, **kw: Any
) -> HandlerContext:
    """A handler context as the job engine builds it for a job file."""
    ctx = handler_context(job_dir, next(iter(sources.values())), params, **kw)
    ctx.sources = dict(sources)
    return ctx
