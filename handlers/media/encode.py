"""ffmpeg-python building blocks shared by the media handlers.

Every graph starts at :func:`handlers.media.ffmpeg_run.media_input` (the hardened
input); this module adds what the video routes share:

- :data:`VideoQuality`, :data:`AacBitrate`: the encode params the video routes share.
- :func:`prepare_video`: deinterlace, square pixels and HDR tone-mapping, so each
  route sees the picture viewers see.
- :func:`encode_video`: run an H.264 encode with the probed encoder and fall back
  to libx264 at once if a hardware path fails on this input.
- :func:`video_summary`: the facts of an encoded video for the manifest's ``result``.
- :func:`font_file`: the font shipped in ``handlers/media/assets`` for text overlays.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import structlog
from ffmpeg.nodes import FilterableStream
from pydantic import Field

from gpu.encoders import LIBX264, VideoEncoderChoice, choose_video_encoder, encoder_args
from gpu.ffmpeg_binary import ffmpeg_filters, ffmpeg_version
from handlers.exceptions import HandlerConfigError, InputError, MediaToolError
from handlers.media.decode_caps import DecodeCaps
from handlers.media.ffmpeg_run import FfmpegTimeoutError, run_ffmpeg
from handlers.media.probe import MediaInfo, VideoStream

log = structlog.get_logger(__name__)

# The encode settings every video route offers, declared once. 0 on libx264 is lossless
# (High 4:4:4 Predictive profile: see gpu.encoders.encoder_args).
VideoQuality = Annotated[
    int | None, Field(ge=0, le=51, description="CRF (libx264) or CQ (NVENC); None: encoder default")
]
AacBitrate = Annotated[str, Field(pattern=r"^[1-9][0-9]{1,2}k$", description="AAC bitrate")]

FONT_NAME = "DejaVuSans-Bold.ttf"
# Paths that need no escaping inside a filter graph.
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9/._+-]+$")


def can_tonemap() -> bool:
    """HDR -> SDR needs zscale (libzimg) and tonemap; distro builds usually have both."""
    return {"zscale", "tonemap"} <= ffmpeg_filters()


def prepare_video(
    stream: FilterableStream, video: VideoStream, *, tonemap: bool = True
) -> FilterableStream:
    """Deinterlace and resample to square pixels; tone-map HDR when ``tonemap``."""
    if video.interlaced:
        stream = stream.filter("bwdif", mode="send_frame")
    if not video.square_pixels:
        # Resample to square pixels first so sizes are computed on what viewers see.
        stream = stream.filter("scale", "trunc(iw*sar/2)*2", "ih").filter("setsar", 1)
    if tonemap and video.hdr and can_tonemap():
        stream = tonemap_to_sdr(stream, video)
    return stream


def tonemap_to_sdr(stream: FilterableStream, video: VideoStream) -> FilterableStream:
    # HLG/PQ (phone HDR) squeezed into 8-bit looks washed out: tone-map to BT.709
    # SDR. The input's transfer is given explicitly: zscale refuses frames whose
    # tags are incomplete.
    return (
        stream.filter(
            "zscale", tin=video.color_transfer, pin="bt2020", min="bt2020nc", t="linear", npl=100
        )
        .filter("format", "gbrpf32le")
        .filter("zscale", p="bt709")
        .filter("tonemap", "hable", desat=0)
        .filter("zscale", t="bt709", m="bt709", r="tv")
    )


def encode_video(
    *,
    device: str,
    build: Callable[[VideoEncoderChoice], list[str]],
    outputs: list[Path],
    deadline: float,
    duration_s: float | None,
    progress: Callable[[float], None],
    caps: DecodeCaps | None = None,
) -> dict[str, Any]:
    """Run ``build(choice)`` through run_ffmpeg; return the facts for ``result.runtime``.

    A hardware path that passed its probe can still fail on a real input (an
    NVENC session limit, an NVDEC profile it lacks): then the encode is re-run on
    libx264 at once rather than failing the job. ``outputs`` are removed on any
    failure so no half-written file is left behind. ``caps``: the route's caps, which
    the run enforces while decoding (:class:`DecodeCaps`).
    """
    choice = choose_video_encoder(device)
    runtime: dict[str, Any] = {**choice.as_runtime(), "ffmpeg": ffmpeg_version()}

    def run(c: VideoEncoderChoice) -> None:
        run_ffmpeg(build(c), deadline=deadline, duration_s=duration_s, progress=progress, caps=caps)

    try:
        try:
            run(choice)
        except (InputError, HandlerConfigError, FfmpegTimeoutError):
            raise
        except MediaToolError as exc:
            if choice.codec == LIBX264 and choice.hwaccel is None:
                raise
            log.warning("hw_encode_failed_retrying_cpu", error=str(exc), codec=choice.codec)
            fallback = VideoEncoderChoice(
                codec=LIBX264,
                hwaccel=None,
                args=encoder_args(LIBX264),
                reason=f"{choice.codec}/{choice.hwaccel} failed on this input: libx264",
            )
            run(fallback)
            runtime.update(fallback.as_runtime(), hw_error=str(exc)[:300])
    except BaseException:
        for path in outputs:
            path.unlink(missing_ok=True)
        raise
    return runtime


def video_summary(out: MediaInfo, *, has_audio: bool = False) -> dict[str, Any]:
    """Facts of an encoded video for the manifest's ``result`` (``has_audio`` adds that key)."""
    v, a = out.video, out.audio
    return {
        "width": v.width if v else None,
        "height": v.height if v else None,
        "fps": v.fps if v else None,
        "duration_s": None if out.duration_s is None else round(out.duration_s, 3),
        "video_codec": v.codec if v else None,
        **({"has_audio": out.has_audio} if has_audio else {}),
        "audio_codec": a.codec if a else None,
        "size_bytes": out.size_bytes,
    }


def font_file(work_dir: Path) -> Path:
    """The shipped font as a path a filter graph can name without escaping."""
    ref = resources.files("handlers.media") / "assets" / FONT_NAME
    if isinstance(ref, Path) and _PLAIN_PATH.fullmatch(str(ref)):
        return ref
    # Zipped install, or a path with spaces or colons: a copy under the scratch dir is
    # simpler than getting two levels of filter-graph escaping right.
    copy = work_dir / FONT_NAME
    with resources.as_file(ref) as path:
        shutil.copyfile(path, copy)
    return copy
