"""The one ffmpeg run of a render: a filter graph built from the EDL.

Every segment is its own input, seeked to its start (``-ss``/``-t`` before ``-i``), so a
long source is only decoded where the EDL cuts it; each becomes ``W x H`` at the
output rate, square pixels, and 48 kHz stereo (silence for a source without audio),
so segments of different sources concatenate. Then the segments are joined (concat,
or ``xfade``/``acrossfade`` with a cross-fade), and the overlays are drawn on the
output timeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ffmpeg
from ffmpeg.nodes import FilterableStream

from gpu.encoders import VideoEncoderChoice
from handlers.media.decode_caps import DecodeCaps
from handlers.media.encode import can_tonemap, prepare_video, tonemap_to_sdr
from handlers.media.ffmpeg_run import ffmpeg_number as num
from handlers.media.ffmpeg_run import file_url, media_input, option_kwargs
from handlers.media.probe import MediaInfo, VideoStream
from handlers.render_edl.crop import apply_crop, segment_crop
from handlers.render_edl.models import Crop, RenderParams, TextOverlay
from handlers.render_edl.overlays import PreparedOverlay, draw_text, place_image

AUDIO_RATE = 48_000


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """One segment as cut: its source file, probed facts and (maybe snapped) times."""

    path: Path
    info: MediaInfo
    video: VideoStream
    frame: tuple[int, int]  # the source frame as filters see it (rotated, square pixels)
    start: float
    end: float
    speed: float
    crop: Crop

    @property
    def output_s(self) -> float:
        return (self.end - self.start) / self.speed


@dataclass(frozen=True, slots=True)
class RenderPlan:
    params: RenderParams
    segments: list[SegmentPlan]
    overlays: list[PreparedOverlay] = field(default_factory=list)
    font: Path | None = None
    caps: DecodeCaps = field(default_factory=DecodeCaps)

    @property
    def duration_s(self) -> float:
        fade = self.params.crossfade_s * (len(self.segments) - 1)
        return sum(s.output_s for s in self.segments) - fade


def atempo_chain(stream: FilterableStream, speed: float) -> FilterableStream:
    """atempo takes 0.5..100 per instance: halves are chained for slower speeds."""
    while speed < 0.5:
        stream = stream.filter("atempo", 0.5)
        speed /= 0.5
    return stream.filter("atempo", num(speed))


def segment_streams(
    seg: SegmentPlan, plan: RenderPlan, choice: VideoEncoderChoice
) -> tuple[FilterableStream, FilterableStream | None]:
    params = plan.params
    out, fps = params.output.size, params.output.rate
    length = seg.end - seg.start
    src = media_input(
        seg.path,
        hw_args=choice.input_args(),
        caps=plan.caps,
        ss=num(seg.start, 3),
        t=num(length, 3),
    )
    dur = num(seg.output_s, 6)
    v = prepare_video(src[str(seg.video.index)], seg.video, tonemap=False)
    if seg.video.hdr and can_tonemap():
        v = tonemap_to_sdr(v, seg.video)
    v = v.filter("setpts", "PTS-STARTPTS")

    sc = segment_crop(seg.crop, seg.start, seg.end)
    v = apply_crop(
        v, sc, src=seg.frame, out=out, fps=fps, speed=seg.speed, source_fps=seg.video.fps
    )
    # Exactly the segment's output length, whatever the last source frame's duration.
    v = v.filter("trim", duration=dur).filter("setpts", "PTS-STARTPTS").filter("format", "yuv420p")
    if params.audio == "mute":
        return v, None
    if seg.info.audio is not None:
        a = src[str(seg.info.audio.index)].filter("asetpts", "PTS-STARTPTS")
        if seg.speed != 1:
            a = atempo_chain(a, seg.speed)
    else:  # silence, so segments with and without sound concatenate
        a = ffmpeg.input(f"anullsrc=r={AUDIO_RATE}:cl=stereo", f="lavfi", t=dur).audio
    a = (
        a.filter("aresample", AUDIO_RATE)
        .filter("aformat", sample_fmts="fltp", channel_layouts="stereo")
        .filter("apad", whole_dur=dur)
        .filter("atrim", duration=dur)
        .filter("asetpts", "PTS-STARTPTS")
    )
    return v, a


def join(
    parts: list[tuple[FilterableStream, FilterableStream | None]], plan: RenderPlan
) -> tuple[FilterableStream, FilterableStream | None]:
    fade = plan.params.crossfade_s
    has_audio = parts[0][1] is not None
    if len(parts) == 1:
        return parts[0]
    if not fade:
        flat = [s for v, a in parts for s in ((v, a) if has_audio else (v,))]
        joined = ffmpeg.concat(*flat, v=1, a=1 if has_audio else 0).node
        return joined[0], (joined[1] if has_audio else None)
    v, a = parts[0]
    at = plan.segments[0].output_s
    for (nv, na), seg in zip(parts[1:], plan.segments[1:], strict=True):
        v = ffmpeg.filter(
            [v, nv], "xfade", transition="fade", duration=num(fade), offset=num(at - fade)
        )
        if a is not None and na is not None:
            a = ffmpeg.filter([a, na], "acrossfade", d=num(fade))
        at += seg.output_s - fade
    return v, a


def build_args(plan: RenderPlan, out_path: Path, choice: VideoEncoderChoice) -> list[str]:
    """ffmpeg arguments (no binary) for the whole render."""
    params = plan.params
    size = params.output.size
    v, a = join([segment_streams(s, plan, choice) for s in plan.segments], plan)
    for ov in plan.overlays:
        if isinstance(ov.spec, TextOverlay):
            assert plan.font is not None
            v = draw_text(v, ov, plan.font, size)
        else:
            v = place_image(v, ov, size, plan.caps)
    if plan.overlays:
        v = v.filter("format", "yuv420p")
    opts: dict[str, Any] = option_kwargs(choice.codec_args(params.output.quality))
    streams = [v]
    if a is not None:
        streams.append(a)
        opts.update({"c:a": "aac", "b:a": params.output.audio_bitrate, "ar": AUDIO_RATE, "ac": 2})
    else:
        opts["an"] = None
    opts.update({"movflags": "+faststart", "sn": None, "r": params.output.rate})
    return ffmpeg.output(*streams, file_url(out_path), **opts).get_args()
