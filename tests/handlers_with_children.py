"""A test handler that spends its time in a real ffmpeg child process, as media routes do.

``RealtimeFfmpegHandler`` re-encodes its input at the input's own pace (``-re``),
so a job takes as long as the clip and a signal sent meanwhile meets a running
ffmpeg. It records, under ``marker_dir``, the worker's pid (``worker-<pid>``) and,
once ffmpeg reports progress, ``ffmpeg-running``: a test knows which processes
to look for and when to send its signal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from handlers.media.ffmpeg_run import input_args, run_ffmpeg
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile


class RealtimeParams(HandlerParams):
    marker_dir: str
    duration_s: float  # the input's length: the job lasts about that long


class RealtimeFfmpegHandler:
    name: ClassVar[str] = "realtime-ffmpeg"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type[HandlerParams]] = RealtimeParams
    extensions: ClassVar[frozenset[str]] = frozenset({".mp4"})

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params: RealtimeParams = ctx.params  # type: ignore[assignment]
        markers = Path(params.marker_dir)
        markers.mkdir(parents=True, exist_ok=True)
        (markers / f"worker-{os.getpid()}").write_text(str(os.getpgid(0)))
        running = markers / "ffmpeg-running"

        def progress(fraction: float) -> None:
            if not running.exists():
                running.write_text(f"{fraction:.3f}")
            ctx.progress(fraction, "encode")

        out = ctx.output_dir / "copy.mp4"
        args = [*input_args(ctx.input_path, options=["-re"]), "-an", "-c:v", "mpeg4", str(out)]
        run_ffmpeg(args, deadline=ctx.deadline, progress=progress, duration_s=params.duration_s)
        return HandlerResult(outputs=[OutputFile("copy.mp4", out, "video", "video/mp4")])
