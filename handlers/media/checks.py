"""Input checks, caps and frame geometry shared by the media handlers.

Every media route probes its input through :func:`probe_input`, so it rejects the
same user mistakes with the same one-line messages (no video for a video route,
no audio where audio is needed, frames or durations over the route's caps), and
computes output sizes the same way: square pixels, display orientation, even
dimensions, never upscaled. The caps and the even-pixels rule are declared once
here as pydantic types the params models use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import AfterValidator, Field

from handlers.exceptions import InputError
from handlers.media.decode_caps import DecodeCaps
from handlers.media.probe import AudioStream, MediaInfo, VideoStream, probe
from handlers.protocol import HandlerContext, HandlerParams

# The output may come out a little shorter than the container says (rounding, a
# last partial frame); much shorter means the input stopped decoding early.
TRUNCATION_RATIO = 0.9
TRUNCATION_SLACK_S = 0.5

P = TypeVar("P", bound=HandlerParams)


def hms(seconds: float) -> str:
    if seconds < 60:  # "0:00:00" would hide a sub-minute cap
        return f"{seconds:.1f} s"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _even(value: int) -> int:
    # yuv420p (what every player expects) halves chroma both ways: sizes must be even.
    if value % 2:
        raise ValueError("must be an even number of pixels")
    return value


EvenPixels = Annotated[int, AfterValidator(_even)]
"""A frame size in pixels that must be even; add range limits with ``Field``."""

# Upper bounds keep every value one ffmpeg takes: a year of media, and 2**28 pixels
# (ffmpeg refuses any frame of about that size or more: av_image_check_size).
MAX_SECONDS = 366 * 24 * 3600
MAX_PIXELS = 16384 * 16384

# The caps as field types, so a params model that cannot derive from MediaLimits
# (its fields would move first in the manifest's ``params``) still declares them once.
MaxDurationS = Annotated[
    float, Field(gt=0, le=MAX_SECONDS, description="longer inputs are rejected")
]
MaxInputPixels = Annotated[
    int, Field(gt=0, le=MAX_PIXELS, description="inputs with larger frames are rejected")
]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
"""A point or span in a media timeline (a trim, a segment), in seconds."""
DEFAULT_MAX_DURATION_S = 4 * 3600
DEFAULT_MAX_INPUT_PIXELS = 8192 * 8192


class MediaLimits(HandlerParams):
    """Caps every media route shares; inputs over them fail with an input error."""

    max_duration_s: MaxDurationS = DEFAULT_MAX_DURATION_S
    max_input_pixels: MaxInputPixels = DEFAULT_MAX_INPUT_PIXELS


class DurationCap(Protocol):
    """Params with a duration cap (every media route's)."""

    @property
    def max_duration_s(self) -> float: ...


@runtime_checkable
class FrameCaps(DurationCap, Protocol):
    """Params with a duration and a frame-size cap (every route that reads video)."""

    @property
    def max_input_pixels(self) -> int: ...


Needs = Literal["video", "audio", "video or audio"]


@dataclass(frozen=True, slots=True)
class ProbedInput:
    info: MediaInfo
    video: VideoStream | None  # within the caps; None only where the route needs no video
    audio: AudioStream | None


def probe_input(
    ctx: HandlerContext,
    route: str,
    caps: DurationCap,
    *,
    needs: Needs,
    audio_reason: str | None = None,
    clock: Callable[[float], str] = hms,
) -> ProbedInput:
    """Probe the job's input, apply the route's caps and require the streams it needs.

    ``needs="video"``: a video stream within ``caps`` (and, with ``audio_reason``, an
    audio stream: the reason ends the error message). ``needs="audio"``: an audio
    stream within the duration cap, shown with ``clock``. ``needs="video or audio"``:
    either; a video stream, when there is one, must be within ``caps``. Anything
    else is an :class:`InputError` with a one-line message.
    """
    if needs == "audio":
        info = _probe(ctx)
        got = "video only" if info.has_video else "no audio stream"
        require_audio(info, route, f"needs a file with audio (got {got})")
        check_duration(info, caps.max_duration_s, "audio", clock)
        return ProbedInput(info, None, info.audio)
    if not isinstance(caps, FrameCaps):  # a programming error: say so before any work
        raise TypeError(f"the {route} route reads video: its params need max_input_pixels")
    info = _probe(ctx)
    video = None
    if needs == "video or audio":
        check_duration(info, caps.max_duration_s, clock=clock)
    if needs == "video" or info.has_video:
        video = require_video(
            info, route, max_input_pixels=caps.max_input_pixels, max_duration_s=caps.max_duration_s
        )
    if audio_reason is not None:
        require_audio(info, route, audio_reason)
    return ProbedInput(info, video, info.audio)


def decode_caps(
    caps: DurationCap, info: MediaInfo, *, start_s: float = 0.0, speed: float = 1.0
) -> DecodeCaps:
    """The route's caps for the ffmpeg run that decodes this input (see DecodeCaps):
    frames over ``max_input_pixels`` and decoding past ``max_duration_s`` fail it even
    where the container said otherwise. ``start_s``/``speed``: a trim's start and the
    playback speed, so the duration cap lands at the right output time."""
    pixels = caps.max_input_pixels if isinstance(caps, FrameCaps) else None
    video = info.video
    return DecodeCaps(
        max_pixels=pixels,
        max_duration_s=caps.max_duration_s,
        start_s=start_s,
        speed=speed,
        declared_s=info.duration_s,
        declared_size=(video.width, video.height) if video else None,
    )


def _probe(ctx: HandlerContext) -> MediaInfo:
    ctx.progress(0.0, "probe")
    return probe(ctx.input_path, deadline=ctx.deadline)


def coerce_params(params: HandlerParams, cls: type[P]) -> P:
    """``params`` as ``cls`` (the runner already validated them; direct callers may not)."""
    return params if isinstance(params, cls) else cls.model_validate(params.model_dump())


def require_video(
    info: MediaInfo, route: str, *, max_input_pixels: int, max_duration_s: float
) -> VideoStream:
    """The video stream to work on, or an InputError saying why there is none."""
    video = info.video
    if video is None:
        got = "audio only" if info.has_audio else "no audio or video"
        if info.cover_art:
            got += ", with a cover picture"
        raise InputError(f"no video stream: the {route} route needs a video file (got {got})")
    if video.width <= 0 or video.height <= 0:
        raise InputError(f"the video stream has no frame size ({video.codec}): corrupt file?")
    if video.width * video.height > max_input_pixels:
        raise InputError(
            f"the video frame is {video.width}x{video.height}, over the limit of "
            f"{max_input_pixels:,} pixels (max_input_pixels)"
        )
    check_duration(info, max_duration_s, "video")
    return video


def require_audio(info: MediaInfo, route: str, reason: str) -> AudioStream:
    """The audio stream, or an InputError: "no audio stream: the <route> route <reason>"."""
    audio = info.audio
    if audio is None:
        raise InputError(f"no audio stream: the {route} route {reason}")
    return audio


def check_duration(
    info: MediaInfo,
    max_duration_s: float,
    what: str = "file",
    clock: Callable[[float], str] = hms,
) -> None:
    if info.duration_s is not None and info.duration_s > max_duration_s:
        raise InputError(
            f"the {what} is {clock(info.duration_s)} long; this route accepts at most "
            f"{clock(max_duration_s)} (max_duration_s)"
        )


def check_complete(expected_s: float | None, got_s: float | None) -> None:
    """InputError when far less than ``expected_s`` seconds could be decoded."""
    if (
        expected_s
        and got_s is not None
        and got_s < expected_s * TRUNCATION_RATIO - (TRUNCATION_SLACK_S)
    ):
        raise InputError(
            f"the input is truncated or corrupt: only {got_s:.1f} s of its "
            f"{expected_s:.1f} s could be decoded"
        )


def display_size(video: VideoStream) -> tuple[float, float]:
    """What viewers see: rotation applied, non-square pixels resampled to square."""
    w, h = float(video.display_width), float(video.display_height)
    if not video.square_pixels and video.sar:
        sar = video.sar[0] / video.sar[1]
        # The SAR applies to coded pixels: widen the coded width, then rotate.
        if video.quarter_turn:
            h *= sar
        else:
            w *= sar
    return w, h


def fit_even(
    width: float, height: float, *, max_short: int | None = None, max_long: int | None = None
) -> tuple[int, int]:
    """Scale (width, height) down to fit the caps, keeping aspect; even sizes, no upscaling."""
    scale = 1.0
    if max_short:
        scale = min(scale, max_short / min(width, height))
    if max_long:
        scale = min(scale, max_long / max(width, height))
    # yuv420p (what players expect) halves chroma both ways: sizes must be even.
    w = max(2, int(width * scale / 2) * 2)
    h = max(2, int(height * scale / 2) * 2)
    return w, h
