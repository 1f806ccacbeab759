"""The ``vertical`` route: reframe any video to a 1080x1920 (9:16) H.264/AAC MP4.

The frame is scaled until it *covers* the target and the centre is cropped out,
so nothing is letterboxed. Rotated phone videos are handled because ffmpeg
applies the display rotation while decoding; anamorphic (non-square pixel) inputs
are first resampled to square pixels; interlaced camcorder footage (.mts, .mpg)
is deinterlaced; HDR (HLG/PQ, as phones record) is tone-mapped to BT.709 SDR.

The H.264 encoder is whatever :func:`gpu.encoders.choose_video_encoder` proved to
work (NVENC, else libx264); filters run on the CPU in both cases, which keeps
the output identical in geometry whichever encoder ran. If a hardware path fails
mid-job, the job is retried at once on libx264 rather than failing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import ffmpeg
from pydantic import Field, field_validator

from gpu.encoders import LIBX264, VideoEncoderChoice, choose_video_encoder, encoder_args
from gpu.ffmpeg_binary import ffmpeg_filters, ffmpeg_version
from handlers.exceptions import InputError, MediaToolError
from handlers.ffmpeg_run import (
    SAFE_DEMUXERS,
    FfmpegTimeoutError,
    file_url,
    run_ffmpeg,
)
from handlers.probe import MediaInfo, VideoStream, probe
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile

OUTPUT_NAME = "vertical.mp4"
# The output may come out a little shorter than the container says (rounding, a
# last partial frame); much shorter means the input stopped decoding early.
_TRUNCATION_RATIO = 0.9
_TRUNCATION_SLACK_S = 0.5


class VerticalParams(HandlerParams):
    width: int = Field(1080, ge=16, le=4096, description="output width in pixels (even)")
    height: int = Field(1920, ge=16, le=4096, description="output height in pixels (even)")
    fps: int = Field(30, ge=1, le=120, description="output frame rate (constant)")
    crop: Literal["center"] = Field("center", description="which part of the frame to keep")
    quality: int | None = Field(
        None, ge=0, le=51, description="CRF (libx264) or CQ (NVENC); None: encoder default"
    )
    audio_bitrate: str = Field("128k", pattern=r"^[1-9][0-9]{1,2}k$", description="AAC bitrate")
    max_duration_s: float = Field(4 * 3600, gt=0, description="longer inputs are rejected")
    max_input_pixels: int = Field(
        8192 * 8192, gt=0, description="inputs with larger frames are rejected"
    )

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int) -> int:
        # yuv420p (what every player expects) halves chroma both ways: sizes must be even.
        if value % 2:
            raise ValueError("must be an even number of pixels")
        return value


class VerticalHandler:
    name: ClassVar[str] = "vertical"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type[HandlerParams]] = VerticalParams
    extensions: ClassVar[frozenset[str]] = frozenset(
        {
            ".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mts", ".m2ts", ".ts",
            ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
        }
    )  # fmt: skip

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params = ctx.params
        if not isinstance(params, VerticalParams):
            params = VerticalParams.model_validate(params.model_dump())
        log = ctx.log.bind(handler=self.name)
        ctx.progress(0.0, "probe")
        info = probe(ctx.input_path, deadline=ctx.deadline)
        video = check_input(info, params)
        duration = min(info.duration_s, params.max_duration_s) if info.duration_s else None

        choice = choose_video_encoder(ctx.device)
        out_path = ctx.output_dir / OUTPUT_NAME
        runtime: dict[str, Any] = {**choice.as_runtime(), "ffmpeg": ffmpeg_version()}
        if video.hdr:
            runtime["hdr_tonemap"] = can_tonemap()
            if not runtime["hdr_tonemap"]:
                log.warning("hdr_without_tonemap", reason="ffmpeg lacks zscale/tonemap")
        started = time.monotonic()
        try:
            try:
                self._encode(ctx, info, video, params, choice, out_path, duration)
            except (InputError, FfmpegTimeoutError):
                raise
            except MediaToolError as exc:
                if choice.codec == LIBX264 and choice.hwaccel is None:
                    raise
                # A hardware path that passed its probe can still fail on a real
                # input (NVENC session limit, an NVDEC profile it lacks): use the CPU.
                log.warning("hw_encode_failed_retrying_cpu", error=str(exc), codec=choice.codec)
                fallback = VideoEncoderChoice(
                    codec=LIBX264,
                    hwaccel=None,
                    args=encoder_args(LIBX264),
                    reason=f"{choice.codec}/{choice.hwaccel} failed on this input: libx264",
                )
                self._encode(ctx, info, video, params, fallback, out_path, duration)
                runtime.update(fallback.as_runtime(), hw_error=str(exc)[:300])
            runtime["encode_s"] = round(time.monotonic() - started, 3)
            out = probe(out_path, deadline=ctx.deadline)
        except BaseException:
            out_path.unlink(missing_ok=True)  # never leave a half-written output behind
            raise

        expected = duration
        if (
            expected
            and out.duration_s is not None
            and (out.duration_s < expected * _TRUNCATION_RATIO - _TRUNCATION_SLACK_S)
        ):
            out_path.unlink(missing_ok=True)
            raise InputError(
                f"the input is truncated or corrupt: only {out.duration_s:.1f} s of its "
                f"{expected:.1f} s could be decoded"
            )
        log.info(
            "vertical_done",
            encoder=runtime["video_encoder"],
            encode_s=runtime["encode_s"],
            duration_s=out.duration_s,
        )
        return HandlerResult(
            outputs=[OutputFile(OUTPUT_NAME, out_path, "video", "video/mp4")],
            media=info.as_manifest_dict(),
            runtime=runtime,
            summary=output_summary(out),
        )

    def _encode(
        self,
        ctx: HandlerContext,
        info: MediaInfo,
        video: VideoStream,
        params: VerticalParams,
        choice: VideoEncoderChoice,
        out_path: Path,
        duration: float | None,
    ) -> None:
        args = build_args(ctx.input_path, out_path, info, video, params, choice)
        run_ffmpeg(
            args,
            deadline=ctx.deadline,
            duration_s=duration,
            progress=lambda fraction: ctx.progress(fraction, "encode"),
        )


def check_input(info: MediaInfo, params: VerticalParams) -> VideoStream:
    """The video stream to reframe, or an InputError saying why there is none."""
    video = info.video
    if video is None:
        got = "audio only" if info.has_audio else "no audio or video"
        if info.cover_art:
            got += ", with a cover picture"
        raise InputError(f"no video stream: the vertical route needs a video file (got {got})")
    if video.width <= 0 or video.height <= 0:
        raise InputError(f"the video stream has no frame size ({video.codec}): corrupt file?")
    if video.width * video.height > params.max_input_pixels:
        raise InputError(
            f"the video frame is {video.width}x{video.height}, over the limit of "
            f"{params.max_input_pixels:,} pixels (max_input_pixels)"
        )
    if info.duration_s is not None and info.duration_s > params.max_duration_s:
        raise InputError(
            f"the video is {_hms(info.duration_s)} long; this route accepts at most "
            f"{_hms(params.max_duration_s)} (max_duration_s)"
        )
    return video


def can_tonemap() -> bool:
    """HDR -> SDR needs zscale (libzimg) and tonemap; distro builds usually have both."""
    return {"zscale", "tonemap"} <= ffmpeg_filters()


def video_filters(
    video: VideoStream, params: VerticalParams, stream: Any, *, tonemap: bool = False
) -> Any:
    """Apply the reframing filters to an ffmpeg-python stream and return the result."""
    w, h = params.width, params.height
    if video.interlaced:
        stream = stream.filter("bwdif", mode="send_frame")
    if not video.square_pixels:
        # Resample to square pixels first so "cover" is computed on what viewers see.
        stream = stream.filter("scale", "trunc(iw*sar/2)*2", "ih").filter("setsar", 1)
    # Dropping frames before scaling saves work; adding them after does too.
    fps_first = video.fps is not None and video.fps > params.fps
    if fps_first:
        stream = stream.filter("fps", params.fps)
    stream = stream.filter("scale", w, h, force_original_aspect_ratio="increase")
    if params.crop == "center":
        stream = stream.filter("crop", w, h)  # x, y default to the centre
    stream = stream.filter("setsar", 1)
    if tonemap and video.color_transfer:
        # HLG/PQ (phone HDR) squeezed into 8-bit looks washed out: tone-map to
        # BT.709 SDR, at output size where it is cheapest. The input's transfer is
        # given explicitly: zscale refuses frames whose tags are incomplete.
        stream = (
            stream.filter(
                "zscale",
                tin=video.color_transfer,
                pin="bt2020",
                min="bt2020nc",
                t="linear",
                npl=100,
            )
            .filter("format", "gbrpf32le")
            .filter("zscale", p="bt709")
            .filter("tonemap", "hable", desat=0)
            .filter("zscale", t="bt709", m="bt709", r="tv")
        )
    if not fps_first:
        stream = stream.filter("fps", params.fps)
    return stream.filter("format", "yuv420p")


def build_args(
    input_path: Path,
    out_path: Path,
    info: MediaInfo,
    video: VideoStream,
    params: VerticalParams,
    choice: VideoEncoderChoice,
) -> list[str]:
    """ffmpeg arguments (no binary) for one vertical encode, via ffmpeg-python."""
    in_opts: dict[str, Any] = {
        "protocol_whitelist": "file",
        "format_whitelist": ",".join(SAFE_DEMUXERS),
    }
    hw = choice.input_args()
    in_opts.update({hw[i].lstrip("-"): hw[i + 1] for i in range(0, len(hw), 2)})
    src = ffmpeg.input(file_url(input_path), **in_opts)
    # Select streams by index: "v:0" could be a cover picture, not the video.
    tonemap = video.hdr and can_tonemap()
    streams = [video_filters(video, params, src[str(video.index)], tonemap=tonemap)]
    out_opts: dict[str, Any] = _pairs(choice.codec_args(params.quality))
    if info.audio is not None:
        streams.append(src[str(info.audio.index)])
        out_opts.update({"c:a": "aac", "b:a": params.audio_bitrate, "ar": 48000, "ac": 2})
    else:
        out_opts["an"] = None
    out_opts.update({"movflags": "+faststart", "t": f"{params.max_duration_s:g}", "sn": None})
    return ffmpeg.output(*streams, file_url(out_path), **out_opts).get_args()


def output_summary(out: MediaInfo) -> dict[str, Any]:
    v, a = out.video, out.audio
    return {
        "width": v.width if v else None,
        "height": v.height if v else None,
        "fps": v.fps if v else None,
        "duration_s": None if out.duration_s is None else round(out.duration_s, 3),
        "video_codec": v.codec if v else None,
        "has_audio": out.has_audio,
        "audio_codec": a.codec if a else None,
        "size_bytes": out.size_bytes,
    }


def _pairs(args: list[str]) -> dict[str, str]:
    # Encoder options are "-name value" pairs; ffmpeg-python wants them as kwargs.
    return {args[i].lstrip("-"): args[i + 1] for i in range(0, len(args), 2)}


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
