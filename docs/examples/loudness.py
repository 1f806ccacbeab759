"""An example handler: EBU R128 loudness of a file's audio, as ``loudness.json``.

Use it from ``dropgpu.toml`` (docs/handlers.md walks through every line):

    [routes.loudness]
    handler = "docs.examples.loudness:LoudnessHandler"
    params = { target_lufs = -16 }
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import ffmpeg
from pydantic import Field

from handlers.media.audio_io import parse_ebur128
from handlers.media.checks import MediaLimits, check_complete, coerce_params, probe_input
from handlers.media.ffmpeg_run import media_input, run_ffmpeg
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile

REPORT = "loudness.json"


class LoudnessParams(MediaLimits):  # MediaLimits: max_duration_s, max_input_pixels
    target_lufs: float = Field(-23.0, ge=-70, le=0, description="loudness to compute gain for")


class LoudnessHandler:
    name: ClassVar[str] = "loudness"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type[HandlerParams]] = LoudnessParams
    extensions: ClassVar[frozenset[str]] = frozenset(
        {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".mp4", ".mov", ".mkv", ".webm"}
    )
    # Self-description: ffmpeg is all it needs on Modal (no torch image); the default
    # route is used only if it is registered as a built-in (handlers/registry.py).
    modal_image: ClassVar[str] = "ffmpeg"
    default_routes: ClassVar[dict[str, dict[str, Any]]] = {"loudness": {}}

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params = coerce_params(ctx.params, LoudnessParams)
        # Probe (not media: InputError), require an audio stream, apply the duration cap.
        probed = probe_input(ctx, self.name, params, needs="audio")
        info, audio = probed.info, probed.audio
        assert audio is not None  # needs="audio"

        # Decode the audio once through the ebur128 meter; the output is discarded.
        meter = media_input(ctx.input_path)[str(audio.index)].filter(
            "ebur128", framelog="quiet", peak="sample"
        )
        args = ffmpeg.output(meter, "-", f="null").get_args()
        result = run_ffmpeg(
            args,
            deadline=ctx.deadline,
            duration_s=info.duration_s,
            progress=lambda fraction: ctx.progress(0.95 * fraction, "measure"),
        )
        check_complete(info.duration_s, result.out_time_s)  # truncated upload: InputError
        lufs, peak = parse_ebur128(result.stderr_tail)  # None, None for silence

        report = {
            "version": 1,
            "integrated_lufs": lufs,
            "sample_peak_dbfs": peak,
            "target_lufs": params.target_lufs,
            "gain_db": None if lufs is None else round(params.target_lufs - lufs, 2),
        }
        path = ctx.output_dir / REPORT
        path.write_text(json.dumps(report, indent=1))
        ctx.log.info("loudness_measured", integrated_lufs=lufs, sample_peak_dbfs=peak)
        return HandlerResult(
            outputs=[OutputFile(REPORT, path, "loudness", "application/json")],
            media=info.as_manifest_dict(),
            summary=report,
        )
