"""A media handler used only by tests: one libx264 encode with the route's own options.

It lets a test give ffmpeg settings no built-in route would (a profile that cannot
carry the CRF asked for), to see how the engine classifies ffmpeg's refusal.
"""

from __future__ import annotations

from typing import ClassVar

from handlers.media.extensions import VIDEO_EXTENSIONS
from handlers.media.ffmpeg_run import file_url, media_input, run_ffmpeg
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile


class EncoderOptionParams(HandlerParams):
    crf: int = 20
    profile: str = "high"


class EncoderOptionHandler:
    name: ClassVar[str] = "encoder-option"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type[HandlerParams]] = EncoderOptionParams
    extensions: ClassVar[frozenset[str]] = VIDEO_EXTENSIONS

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params: EncoderOptionParams = ctx.params  # type: ignore[assignment]
        out = ctx.output_dir / "encoded.mp4"
        options = {"c:v": "libx264", "crf": params.crf, "profile:v": params.profile,
                   "pix_fmt": "yuv420p", "an": None}  # fmt: skip
        stream = media_input(ctx.input_path).video.output(file_url(out), **options)
        run_ffmpeg(stream.get_args(), deadline=ctx.deadline)
        return HandlerResult(outputs=[OutputFile(out.name, out, "video", "video/mp4")])
