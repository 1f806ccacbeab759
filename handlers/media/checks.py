"""Input checks and frame geometry shared by the media handlers.

Every media route rejects the same user mistakes with the same one-line
messages (no video for a video route, no audio where audio is needed, frames or
durations over the route's caps) and computes output sizes the same way: square
pixels, display orientation, even dimensions, never upscaled.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import Field

from handlers.exceptions import InputError
from handlers.media.probe import AudioStream, MediaInfo, VideoStream
from handlers.protocol import HandlerParams

# The output may come out a little shorter than the container says (rounding, a
# last partial frame); much shorter means the input stopped decoding early.
TRUNCATION_RATIO = 0.9
TRUNCATION_SLACK_S = 0.5

P = TypeVar("P", bound=HandlerParams)


class MediaLimits(HandlerParams):
    """Caps every media route shares; inputs over them fail with an input error."""

    max_duration_s: float = Field(4 * 3600, gt=0, description="longer inputs are rejected")
    max_input_pixels: int = Field(
        8192 * 8192, gt=0, description="inputs with larger frames are rejected"
    )


def coerce_params(params: HandlerParams, cls: type[P]) -> P:
    """``params`` as ``cls`` (the runner already validated them; direct callers may not)."""
    return params if isinstance(params, cls) else cls.model_validate(params.model_dump())


def hms(seconds: float) -> str:
    if seconds < 60:  # "0:00:00" would hide a sub-minute cap
        return f"{seconds:.1f} s"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


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


def require_audio(info: MediaInfo, route: str) -> AudioStream:
    audio = info.audio
    if audio is None:
        raise InputError(
            f"no audio stream: the {route} route scores crowd noise and needs a video "
            "with sound (this file is silent)"
        )
    return audio


def check_duration(info: MediaInfo, max_duration_s: float, what: str = "file") -> None:
    if info.duration_s is not None and info.duration_s > max_duration_s:
        raise InputError(
            f"the {what} is {hms(info.duration_s)} long; this route accepts at most "
            f"{hms(max_duration_s)} (max_duration_s)"
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
