"""The edit decision list as pydantic models: the ``render`` route's params.

A job file's top-level fields (``segments``, ``crop``, ``overlays``, ``output``, ...)
are validated here exactly as route params are, so an error names its field path
(``segments[1].speed``). Times are seconds: segment ``start``/``end`` and crop
keyframe ``t`` in the segment's source, overlay ``start``/``end`` on the output.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import Field, model_validator

from handlers.media.checks import (
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_INPUT_PIXELS,
    MAX_SECONDS,
    EvenPixels,
    MaxDurationS,
    MaxInputPixels,
    Seconds,
)
from handlers.media.encode import AacBitrate, VideoQuality
from handlers.protocol import HandlerParams
from handlers.render_edl.presets import PRESET_FPS, PRESETS, PresetName

MAX_SEGMENTS = 100  # each segment is one seeked input of the single ffmpeg run
MAX_KEYFRAMES = 200
MAX_OVERLAYS = 50

Fraction = Annotated[float, Field(ge=0, le=1)]
Zoom = Annotated[float, Field(ge=1, le=10, description="1: the widest window of the output shape")]
Speed = Annotated[float, Field(ge=0.25, le=4, description="playback speed (audio pitch kept)")]
Size = Annotated[EvenPixels, Field(ge=16, le=4096)]
# A source name in the job file's ``sources`` or, with a "/", a bucket key.
SourceRef = Annotated[str, Field(min_length=1, max_length=1024)]
Colour = Annotated[
    str, Field(pattern=r"^([a-zA-Z]{3,20}|(#|0x)[0-9a-fA-F]{6})(@(0(\.\d+)?|1(\.0+)?))?$")
]
Position = Literal[
    "top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom",
    "bottom-right",
]  # fmt: skip


def is_bucket_key(ref: str) -> bool:
    """A reference with a "/" is a bucket key; without, a name in ``sources``."""
    return "/" in ref


class Keyframe(HandlerParams):
    t: Seconds = Field(description="time in the segment's source (seconds)")
    x: Fraction = Field(0.5, description="crop window centre, 0 left .. 1 right")
    y: Fraction = Field(0.5, description="crop window centre, 0 top .. 1 bottom")
    zoom: Zoom = 1.0


class Crop(HandlerParams):
    """A static centre (``x``, ``y``, ``zoom``) or ``keyframes`` interpolated in time."""

    x: Fraction | None = Field(None, description="static centre; None: 0.5")
    y: Fraction | None = Field(None, description="static centre; None: 0.5")
    zoom: Zoom | None = Field(None, description="static zoom; None: 1")
    keyframes: list[Keyframe] | None = Field(None, min_length=1, max_length=MAX_KEYFRAMES)
    ease: Literal["linear", "smooth"] = Field("linear", description="smooth: ease in and out")

    @model_validator(mode="after")
    def _one_kind(self) -> Crop:
        if self.keyframes is None:
            return self
        if (self.x, self.y, self.zoom) != (None, None, None):
            raise ValueError("give x/y/zoom or keyframes, not both")
        times = [k.t for k in self.keyframes]
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError("keyframes must be in increasing order of t")
        return self

    def points(self) -> list[Keyframe]:
        """The keyframes; a static crop is one keyframe."""
        if self.keyframes:
            return self.keyframes
        x, y, zoom = self.x, self.y, self.zoom
        return [Keyframe(t=0, x=0.5 if x is None else x, y=0.5 if y is None else y, zoom=zoom or 1)]


class Segment(HandlerParams):
    source: SourceRef | None = Field(None, description="None: the job's first source")
    start: Seconds
    end: float = Field(gt=0, le=MAX_SECONDS)
    speed: Speed = 1.0
    crop: Crop | None = Field(None, description="this segment's crop instead of the job's")

    @model_validator(mode="after")
    def _order(self) -> Segment:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    @property
    def output_s(self) -> float:
        return (self.end - self.start) / self.speed


class _Overlay(HandlerParams):
    start: Seconds = Field(0, description="on the output timeline (seconds)")
    end: float | None = Field(None, gt=0, le=MAX_SECONDS, description="None: to the end")
    x: Fraction | None = Field(None, description="centre, 0 left .. 1 right; overrides position")
    y: Fraction | None = Field(None, description="centre, 0 top .. 1 bottom; overrides position")

    @model_validator(mode="after")
    def _window(self) -> _Overlay:
        if self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class TextOverlay(_Overlay):
    type: Literal["text"]
    text: str = Field(min_length=1, max_length=500)
    font: Literal["dejavu-sans-bold"] = "dejavu-sans-bold"
    size: int | None = Field(None, ge=8, le=400, description="pixels; None: fits the frame")
    color: Colour = "white"
    box: bool = True
    box_color: Colour = "black@0.45"
    position: Position = "bottom"


class ImageOverlay(_Overlay):
    type: Literal["image"]
    source: SourceRef = Field(description="PNG (alpha kept), JPEG or WebP")
    scale: float = Field(0.2, gt=0, le=1, description="width as a fraction of the output width")
    opacity: Fraction = 1.0
    position: Position = "top-right"


Overlay = Annotated[TextOverlay | ImageOverlay, Field(discriminator="type")]


class Output(HandlerParams):
    preset: PresetName = "vertical-916"
    width: Size | None = Field(None, description="overrides the preset's width")
    height: Size | None = Field(None, description="overrides the preset's height")
    fps: int | None = Field(None, ge=1, le=120, description="overrides the preset's 30 fps")
    quality: VideoQuality = None
    audio_bitrate: AacBitrate = "160k"

    @property
    def size(self) -> tuple[int, int]:
        w, h = PRESETS[self.preset]
        return self.width or w, self.height or h

    @property
    def rate(self) -> int:
        return self.fps or PRESET_FPS


class RenderParams(HandlerParams):
    segments: list[Segment] = Field([], max_length=MAX_SEGMENTS)
    crop: Crop = Crop()
    overlays: list[Overlay] = Field([], max_length=MAX_OVERLAYS)
    output: Output = Output()
    audio: Literal["source", "mute"] = Field("source", description="mute: no audio track")
    crossfade_s: float = Field(0, ge=0, le=2, description="cross-fade between segments")
    snap_to_beats: bool = Field(False, description="segment ends move to the nearest beat")
    beats: SourceRef | None = Field(
        None, description="a beats.json or a media source; None: the first source's beats"
    )
    max_duration_s: MaxDurationS = DEFAULT_MAX_DURATION_S
    max_input_pixels: MaxInputPixels = DEFAULT_MAX_INPUT_PIXELS

    @model_validator(mode="after")
    def _crossfade_fits(self) -> RenderParams:
        if self.crossfade_s and len(self.segments) > 1:
            shortest = min(s.output_s for s in self.segments)
            if self.crossfade_s >= shortest:
                raise ValueError(
                    f"crossfade_s must be shorter than every segment (the shortest lasts "
                    f"{shortest:.3f} s on the output)"
                )
        return self

    def referenced_keys(self) -> list[str]:
        """Bucket keys the EDL names directly (not through ``sources``), in order."""
        refs = [s.source for s in self.segments if s.source]
        refs += [o.source for o in self.overlays if isinstance(o, ImageOverlay)]
        refs += [self.beats] if self.beats else []
        return list(dict.fromkeys(r for r in refs if is_bucket_key(r)))
