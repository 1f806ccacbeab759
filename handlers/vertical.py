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

Optional params: a crop window at a horizontal focus point instead of the centre,
a trim (start/end in the input's timeline), a speed factor (video and audio,
pitch kept), a text overlay drawn with the font shipped in ``handlers/media/assets``
(never a system font path), and an image watermark from a file path in config.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, ClassVar, Literal

import ffmpeg
from ffmpeg.nodes import FilterableStream
from pydantic import Field, field_validator, model_validator

from gpu.encoders import VideoEncoderChoice
from handlers.exceptions import HandlerConfigError, InputError
from handlers.media.checks import (
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_INPUT_PIXELS,
    MAX_SECONDS,
    EvenPixels,
    MaxDurationS,
    MaxInputPixels,
    Seconds,
    check_complete,
    coerce_params,
    decode_caps,
    probe_input,
)
from handlers.media.decode_caps import DecodeCaps
from handlers.media.encode import (
    AacBitrate,
    VideoQuality,
    can_tonemap,
    encode_video,
    font_file,
    prepare_video,
    tonemap_to_sdr,
    video_summary,
)
from handlers.media.extensions import VIDEO_EXTENSIONS
from handlers.media.ffmpeg_run import (
    ffmpeg_number,
    file_url,
    media_input,
    option_kwargs,
)
from handlers.media.probe import MediaInfo, VideoStream, probe
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile

OUTPUT_NAME = "vertical.mp4"
# The watermark is our operator's image, read with the one demuxer its type needs.
WATERMARK_DEMUXERS = {".png": "png_pipe", ".jpg": "jpeg_pipe", ".jpeg": "jpeg_pipe",
                      ".webp": "webp_pipe"}  # fmt: skip


class VerticalParams(HandlerParams):
    width: EvenPixels = Field(1080, ge=16, le=4096, description="output width in pixels (even)")
    height: EvenPixels = Field(1920, ge=16, le=4096, description="output height in pixels (even)")
    fps: int = Field(30, ge=1, le=120, description="output frame rate (constant)")
    crop: Literal["center", "focus"] = Field(
        "center", description="keep the centre, or the window around focus_x"
    )
    focus_x: float = Field(
        0.5, ge=0, le=1, description="crop=focus: horizontal focus point, 0 left .. 1 right"
    )
    trim_start_s: Seconds = Field(0, description="start here in the input (seconds)")
    trim_end_s: float | None = Field(
        None, gt=0, le=MAX_SECONDS, description="end here in the input (seconds)"
    )
    speed: float = Field(1.0, ge=0.25, le=4, description="playback speed (audio pitch kept)")
    text: str | None = Field(
        None, min_length=1, max_length=200, description="text drawn over the video"
    )
    text_position: Literal["top", "center", "bottom"] = Field("bottom")
    text_size: int | None = Field(
        None, ge=8, le=400, description="font size in pixels; None: height / 18"
    )
    text_color: str = Field("white", pattern=r"^([a-zA-Z]{3,20}|(#|0x)[0-9a-fA-F]{6})$")
    watermark: str | None = Field(
        None, min_length=1, description="PNG/JPEG/WebP file on the worker (absolute path)"
    )
    watermark_position: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = Field(
        "top-right"
    )
    watermark_width: float = Field(
        0.2, gt=0, le=1, description="watermark width as a fraction of the output width"
    )
    watermark_opacity: float = Field(1.0, ge=0, le=1)
    quality: VideoQuality = None
    audio_bitrate: AacBitrate = "128k"
    # MediaLimits' caps, declared here so they stay last in the manifest's params.
    max_duration_s: MaxDurationS = DEFAULT_MAX_DURATION_S
    max_input_pixels: MaxInputPixels = DEFAULT_MAX_INPUT_PIXELS

    @field_validator("watermark")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and PurePath(value).suffix.lower() not in WATERMARK_DEMUXERS:
            raise ValueError(f"must be a {'/'.join(sorted(WATERMARK_DEMUXERS))} image file")
        return value

    @model_validator(mode="after")
    def _trim_order(self) -> VerticalParams:
        if self.trim_end_s is not None and self.trim_end_s <= self.trim_start_s:
            raise ValueError("trim_end_s must be after trim_start_s")
        return self


class VerticalHandler:
    name: ClassVar[str] = "vertical"
    version: ClassVar[str] = "1.1.0"
    # Self-description (handlers.protocol.HandlerInfo): Modal image, GPU, default routes.
    modal_image: ClassVar[str] = "ffmpeg"
    gpu_kind: ClassVar[str] = "video"
    default_routes: ClassVar[dict[str, dict[str, Any]]] = {"vertical": {}}
    Params: ClassVar[type[HandlerParams]] = VerticalParams
    extensions: ClassVar[frozenset[str]] = VIDEO_EXTENSIONS

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params = coerce_params(ctx.params, VerticalParams)
        log = ctx.log.bind(handler=self.name)
        probed = probe_input(ctx, self.name, params, needs="video")
        info, video = probed.info, probed.video
        assert video is not None  # needs="video"
        check_trim(info, params)
        duration = output_duration(info, params)
        overlays = prepare_overlays(params, ctx.work_dir)
        caps = vertical_caps(info, params)

        out_path = ctx.output_dir / OUTPUT_NAME
        hdr: dict[str, Any] = {}
        if video.hdr:
            hdr["hdr_tonemap"] = can_tonemap()
            if not hdr["hdr_tonemap"]:
                log.warning("hdr_without_tonemap", reason="ffmpeg lacks zscale/tonemap")
        started = time.monotonic()
        # Probed encoder, with the shared fall-back to libx264 when a hardware path
        # fails on this input; a failed encode leaves no output behind.
        runtime = encode_video(
            device=ctx.device,
            build=lambda c: build_args(
                ctx.input_path, out_path, info, video, params, c, overlays, caps
            ),
            outputs=[out_path],
            deadline=ctx.deadline,
            duration_s=duration,
            progress=lambda fraction: ctx.progress(fraction, "encode"),
            caps=caps,
        )
        runtime.update(hdr, encode_s=round(time.monotonic() - started, 3))
        try:
            out = probe(out_path, deadline=ctx.deadline)
            check_complete(duration, out.duration_s)
        except BaseException:
            out_path.unlink(missing_ok=True)  # never leave a bad or short output behind
            raise
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
            summary=video_summary(out, has_audio=True),
        )


def check_trim(info: MediaInfo, params: VerticalParams) -> None:
    """An InputError when the trim starts after the end of the video."""
    if info.duration_s is not None and params.trim_start_s >= info.duration_s:
        raise InputError(
            f"trim_start_s is {ffmpeg_number(params.trim_start_s, 3)} s but the video is only "
            f"{info.duration_s:.1f} s long"
        )


def vertical_caps(info: MediaInfo, params: VerticalParams) -> DecodeCaps:
    """The caps of the encode: the input is seeked to trim_start_s and played at speed."""
    return decode_caps(params, info, start_s=params.trim_start_s, speed=params.speed)


def output_duration(info: MediaInfo, params: VerticalParams) -> float | None:
    """How long the output should be: trimmed, sped up, capped; None if unknown."""
    end = info.duration_s
    if params.trim_end_s is not None:
        end = params.trim_end_s if end is None else min(end, params.trim_end_s)
    if end is None:
        return None
    limit = vertical_caps(info, params).max_output_s
    out = (end - params.trim_start_s) / params.speed
    return out if limit is None else min(out, limit)


@dataclass(frozen=True, slots=True)
class Overlays:
    """Files the overlay filters read: the text (as a file: no escaping), font, watermark."""

    text_file: Path | None = None
    font: Path | None = None
    watermark: Path | None = None


def prepare_overlays(params: VerticalParams, work_dir: Path) -> Overlays:
    text_file = font = watermark = None
    if params.text:
        text_file = work_dir / "overlay-text.txt"
        text_file.write_text(params.text, encoding="utf-8")
        font = font_file(work_dir)
    if params.watermark:
        watermark = Path(params.watermark).expanduser()
        if not watermark.is_file():
            raise HandlerConfigError(
                f"watermark image not found on this worker: {params.watermark} "
                "(params.watermark must be a readable file path)"
            )
    return Overlays(text_file, font, watermark)


def video_filters(
    video: VideoStream,
    params: VerticalParams,
    stream: FilterableStream,
    *,
    tonemap: bool = False,
    overlays: Overlays | None = None,
    watermark: FilterableStream | None = None,
) -> FilterableStream:
    """Apply the reframing filters to an ffmpeg-python stream and return the result."""
    w, h = params.width, params.height
    # Deinterlaced, square pixels first so "cover" is computed on what viewers see; HDR is
    # tone-mapped later, at output size, where it is cheapest.
    stream = prepare_video(stream, video, tonemap=False)
    if params.speed != 1:
        stream = stream.filter("setpts", f"(PTS-STARTPTS)/{ffmpeg_number(params.speed)}")
    # Dropping frames before scaling saves work; adding them after does too.
    fps_first = video.fps is not None and video.fps * params.speed > params.fps
    if fps_first:
        stream = stream.filter("fps", params.fps)
    stream = stream.filter("scale", w, h, force_original_aspect_ratio="increase")
    if params.crop == "focus":
        # Centre the window on the focus point, kept inside the frame.
        x = f"clip(iw*{ffmpeg_number(params.focus_x)}-ow/2,0,iw-ow)"
        stream = stream.filter("crop", w, h, x=x, y=0)
    else:
        stream = stream.filter("crop", w, h)  # x, y default to the centre
    stream = stream.filter("setsar", 1)
    if tonemap and video.color_transfer:
        stream = tonemap_to_sdr(stream, video)
    if not fps_first:
        stream = stream.filter("fps", params.fps)
    overlays = overlays or Overlays()
    if overlays.text_file is not None and overlays.font is not None:
        stream = draw_text(stream, params, overlays.text_file, overlays.font)
    if watermark is not None:
        stream = place_watermark(stream, watermark, params)
    return stream.filter("format", "yuv420p")


def draw_text(
    stream: FilterableStream, params: VerticalParams, text_file: Path, font: Path
) -> FilterableStream:
    size = params.text_size or default_text_size(params)
    margin = params.height // 20
    y = {
        "top": str(margin),
        "center": "(h-text_h)/2",
        "bottom": f"h-text_h-{margin}",
    }[params.text_position]
    return stream.filter(
        "drawtext",
        fontfile=str(font),
        textfile=str(text_file),
        expansion="none",  # the text is literal: no %{...} expansion
        fontsize=size,
        fontcolor=params.text_color,
        box=1,
        boxcolor="black@0.45",
        boxborderw=max(2, size // 3),
        x="(w-text_w)/2",
        y=y,
    )


def default_text_size(params: VerticalParams) -> int:
    """height / 18, smaller if the longest line would not fit the width (no wrapping)."""
    longest = max(len(line) for line in (params.text or " ").splitlines() or [" "])
    # DejaVu Sans Bold glyphs average about 0.65 em wide.
    fit = int(0.92 * params.width / (0.65 * max(1, longest)))
    return max(8, min(params.height // 18, fit))


def place_watermark(
    stream: FilterableStream, image: FilterableStream, params: VerticalParams
) -> FilterableStream:
    width = max(2, round(params.width * params.watermark_width / 2) * 2)
    margin = params.width // 30
    image = image.filter("scale", width, -1).filter("format", "rgba")
    if params.watermark_opacity < 1:
        image = image.filter("colorchannelmixer", aa=ffmpeg_number(params.watermark_opacity))
    left, top = f"{margin}", f"{margin}"
    right, bottom = f"main_w-overlay_w-{margin}", f"main_h-overlay_h-{margin}"
    x, y = {
        "top-left": (left, top),
        "top-right": (right, top),
        "bottom-left": (left, bottom),
        "bottom-right": (right, bottom),
    }[params.watermark_position]
    # A still image ends after one frame: repeat it for the whole video.
    return ffmpeg.overlay(stream, image, x=x, y=y, eof_action="repeat", format="auto")


def atempo_chain(stream: FilterableStream, speed: float) -> FilterableStream:
    """atempo takes 0.5..100 per instance: chain halves for slower speeds."""
    while speed < 0.5:
        stream = stream.filter("atempo", 0.5)
        speed /= 0.5
    return stream.filter("atempo", ffmpeg_number(speed))


def build_args(
    input_path: Path,
    out_path: Path,
    info: MediaInfo,
    video: VideoStream,
    params: VerticalParams,
    choice: VideoEncoderChoice,
    overlays: Overlays | None = None,
    caps: DecodeCaps | None = None,
) -> list[str]:
    """ffmpeg arguments (no binary) for one vertical encode, via ffmpeg-python."""
    caps = caps or vertical_caps(info, params)
    trim: dict[str, str] = {}
    # Input seeking: a trim of a long file does not decode what it skips.
    if params.trim_start_s:
        trim["ss"] = ffmpeg_number(params.trim_start_s, 3)
    if params.trim_end_s is not None:
        trim["t"] = ffmpeg_number(params.trim_end_s - params.trim_start_s, 3)
    src = media_input(input_path, hw_args=choice.input_args(), caps=caps, **trim)
    watermark = None
    if overlays is not None and overlays.watermark is not None:
        demuxer = WATERMARK_DEMUXERS[overlays.watermark.suffix.lower()]
        watermark = media_input(overlays.watermark, format_whitelist=(demuxer,), f=demuxer).video
    # Select streams by index: "v:0" could be a cover picture, not the video.
    tonemap = video.hdr and can_tonemap()
    streams = [
        video_filters(
            video,
            params,
            src[str(video.index)],
            tonemap=tonemap,
            overlays=overlays,
            watermark=watermark,
        )
    ]
    out_opts: dict[str, Any] = option_kwargs(choice.codec_args(params.quality))
    if info.audio is not None:
        audio = src[str(info.audio.index)]
        if params.speed != 1:
            audio = atempo_chain(audio, params.speed)
        streams.append(audio)
        out_opts.update({"c:a": "aac", "b:a": params.audio_bitrate, "ar": 48000, "ac": 2})
    else:
        out_opts["an"] = None
    # A little past the cap (on the output timeline): an input that goes on is an error.
    out_opts.update({"movflags": "+faststart", "t": caps.output_t(), "sn": None})
    return ffmpeg.output(*streams, file_url(out_path), **out_opts).get_args()
