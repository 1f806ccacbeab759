"""The ``render`` route: an edit decision list from a job file, rendered in one ffmpeg run.

A job file (DESIGN §10) names its media in ``sources`` and carries the EDL as
params (handlers/render_edl/models.py): segments cut from any of the sources
(start/end in source seconds, a speed with pitch-preserving audio), a crop whose
centre and zoom follow keyframes, timed text and image overlays on the output
timeline, and an output preset. The whole EDL is the job's params, so the
manifest records it as it ran. ``snap_to_beats`` moves segment boundaries to the
nearest beat (a ``beats.json`` source, or the beats of the first source's audio).

The render is one ffmpeg run (handlers/render_edl/graph.py): no per-frame Python.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from handlers.exceptions import InputError
from handlers.media.beats import (
    BEAT_RATE,
    Beats,
    read_beats,
    snap,
    track_beats,
    warm_up_beats,
)
from handlers.media.checks import (
    check_complete,
    coerce_params,
    decode_caps,
    display_size,
    require_video,
)
from handlers.media.decode_caps import DecodeCaps
from handlers.media.encode import encode_video, font_file, video_summary
from handlers.media.ffmpeg_run import ffmpeg_number, media_input, run_ffmpeg
from handlers.media.probe import MediaInfo, probe
from handlers.media.waveform import pcm_output, read_pcm
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile
from handlers.render_edl.graph import RenderPlan, SegmentPlan, build_args
from handlers.render_edl.models import ImageOverlay, RenderParams, TextOverlay
from handlers.render_edl.overlays import PreparedOverlay, image_demuxer

OUTPUT_NAME = "render.mp4"
# A segment may end this far past the source's probed end (container rounding).
END_SLACK_S = 0.1


class RenderHandler:
    name: ClassVar[str] = "render"
    version: ClassVar[str] = "1.0.0"
    # Self-description (handlers.protocol.HandlerInfo).
    modal_image: ClassVar[str] = "ffmpeg"
    gpu_kind: ClassVar[str] = "video"
    default_routes: ClassVar[dict[str, dict[str, Any]]] = {"render": {}}
    Params: ClassVar[type[HandlerParams]] = RenderParams
    extensions: ClassVar[frozenset[str]] = frozenset({".json"})
    sources: ClassVar[str] = "many"
    job_files_only: ClassVar[bool] = True

    def referenced_keys(self, params: HandlerParams) -> list[str]:
        return coerce_params(params, RenderParams).referenced_keys()

    def warm_up(self, cache: dict[str, Any], device: str, params: HandlerParams) -> None:
        warm_up_beats()  # the beat tracker's numba kernels compile once per process

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params = coerce_params(ctx.params, RenderParams)
        log = ctx.log.bind(handler=self.name)
        if not params.segments:
            raise InputError("segments: a render job needs at least one segment")
        sources: Mapping[str, Path] = ctx.sources or {"main": ctx.input_path}
        ctx.progress(0.0, "probe")
        probes: dict[Path, MediaInfo] = {}
        segments: list[SegmentPlan] = []
        for i, seg in enumerate(params.segments):
            path = resolve(sources, seg.source, f"segments[{i}].source")
            if path not in probes:
                probes[path] = probe(path, deadline=ctx.deadline)
            info = probes[path]
            video = require_video(
                info,
                self.name,
                max_input_pixels=params.max_input_pixels,
                max_duration_s=params.max_duration_s,
            )
            check_within(info, seg.start, seg.end, i, seg.source or next(iter(sources)))
            segments.append(
                SegmentPlan(
                    path=path,
                    info=info,
                    video=video,
                    frame=filter_frame(info),
                    start=seg.start,
                    end=seg.end,
                    speed=seg.speed,
                    crop=seg.crop or params.crop,
                )
            )
        beats: Beats | None = None
        if params.snap_to_beats:
            ctx.progress(0.05, "beats")
            beats, beat_path = find_beats(ctx, params, sources, probes)
            segments = snap_segments(segments, beats, beat_path)
        has_text = any(isinstance(o, TextOverlay) for o in params.overlays)
        plan = RenderPlan(
            params=params,
            segments=segments,
            overlays=prepare_overlays(params, sources, ctx.work_dir),
            font=font_file(ctx.work_dir) if has_text else None,
            caps=render_caps(params, probes.values()),
        )
        out_path = ctx.output_dir / OUTPUT_NAME
        started = time.monotonic()
        runtime = encode_video(
            device=ctx.device,
            build=lambda choice: build_args(plan, out_path, choice),
            outputs=[out_path],
            deadline=ctx.deadline,
            duration_s=plan.duration_s,
            progress=lambda f: ctx.progress(0.1 + 0.9 * f, "encode"),
            caps=plan.caps,
        )
        runtime["encode_s"] = round(time.monotonic() - started, 3)
        try:
            out = probe(out_path, deadline=ctx.deadline)
            check_complete(plan.duration_s, out.duration_s)
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
        log.info(
            "render_done",
            segments=len(segments),
            duration_s=out.duration_s,
            encoder=runtime.get("video_encoder"),
        )
        first = probes[segments[0].path]
        summary = video_summary(out, has_audio=True)
        summary["segments"] = [
            {"start": s.start, "end": s.end, "speed": s.speed, "output_s": round(s.output_s, 3)}
            for s in segments
        ]
        summary["expected_duration_s"] = round(plan.duration_s, 3)
        if beats is not None:
            summary["tempo_bpm"] = beats.tempo_bpm
        return HandlerResult(
            outputs=[OutputFile(OUTPUT_NAME, out_path, "video", "video/mp4")],
            media=first.as_manifest_dict(),
            runtime=runtime,
            summary=summary,
        )


def resolve(sources: Mapping[str, Path], ref: str | None, where: str) -> Path:
    """The downloaded file a source name (or bucket key) refers to."""
    if ref is None:
        return next(iter(sources.values()))
    if ref in sources:
        return sources[ref]
    names = ", ".join(repr(n) for n in sources)
    raise InputError(f"{where}: no source named {ref!r} (the job's sources: {names})")


def check_within(info: MediaInfo, start: float, end: float, i: int, name: str) -> None:
    length = info.duration_s
    if length is None:
        return
    if start >= length:
        raise InputError(
            f"segments[{i}].start is {ffmpeg_number(start, 3)} s but source {name!r} is only "
            f"{length:.2f} s long"
        )
    if end > length + END_SLACK_S:
        raise InputError(
            f"segments[{i}].end is {ffmpeg_number(end, 3)} s but source {name!r} is only "
            f"{length:.2f} s long"
        )


def filter_frame(info: MediaInfo) -> tuple[int, int]:
    """The source frame as the filters see it: rotated, square pixels (prepare_video)."""
    video = info.video
    assert video is not None
    w, h = display_size(video)
    width = int(w) if video.square_pixels else max(2, int(w / 2) * 2)
    return width, int(h)


def render_caps(params: RenderParams, infos: Iterable[MediaInfo]) -> DecodeCaps:
    """The frame cap on every input; each segment's own ``-t`` bounds what is decoded."""
    sizes = [(i.video.width, i.video.height) for i in infos if i.video is not None]
    largest = max(sizes, key=lambda s: s[0] * s[1]) if sizes else None
    return DecodeCaps(max_pixels=params.max_input_pixels, declared_size=largest)


def prepare_overlays(
    params: RenderParams, sources: Mapping[str, Path], work_dir: Path
) -> list[PreparedOverlay]:
    prepared: list[PreparedOverlay] = []
    for i, spec in enumerate(params.overlays):
        if isinstance(spec, TextOverlay):
            text = work_dir / f"overlay-{i}.txt"
            text.write_text(spec.text, encoding="utf-8")
            prepared.append(PreparedOverlay(spec, text))
        else:
            assert isinstance(spec, ImageOverlay)
            where = f"overlays[{i}].source"
            path = resolve(sources, spec.source, where)
            prepared.append(PreparedOverlay(spec, path, image_demuxer(path, where)))
    return prepared


def find_beats(
    ctx: HandlerContext,
    params: RenderParams,
    sources: Mapping[str, Path],
    probes: dict[Path, MediaInfo],
) -> tuple[Beats, Path | None]:
    """The beats to snap to, and the media they belong to (None: a beats.json, all media)."""
    path = resolve(sources, params.beats, "beats")
    if is_json(path):
        return read_beats(path, "beats"), None
    info = probes.get(path) or probe(path, deadline=ctx.deadline)
    if info.audio is None:
        raise InputError("snap_to_beats: the beats source has no audio to find beats in")
    caps = decode_caps(params, info)
    pcm = ctx.work_dir / "beats.f32"
    src = media_input(path, caps=caps)
    run_ffmpeg(
        pcm_output(src[str(info.audio.index)], pcm, BEAT_RATE, caps=caps).get_args(),
        deadline=ctx.deadline,
        duration_s=info.duration_s,
        caps=caps,
    )
    beats = track_beats(read_pcm(pcm), BEAT_RATE)
    pcm.unlink(missing_ok=True)
    ctx.log.info("render_beats", tempo_bpm=beats.tempo_bpm, beats=len(beats.times))
    return beats, path


def is_json(path: Path) -> bool:
    if path.suffix.lower() == ".json":
        return True
    with path.open("rb") as fh:
        return fh.read(64).lstrip()[:1] == b"{"


def snap_segments(
    segments: list[SegmentPlan], beats: Beats, media: Path | None
) -> list[SegmentPlan]:
    """Segment starts and ends moved to the nearest beat (of their own media)."""
    out: list[SegmentPlan] = []
    for seg in segments:
        if (media is not None and seg.path != media) or not beats.times:
            out.append(seg)
            continue
        start, end = snap(seg.start, beats.times), snap(seg.end, beats.times)
        if end <= start:  # both ends met the same beat: end on the next one
            later = [b for b in beats.times if b > start]
            end = later[0] if later else seg.end
        length = seg.info.duration_s
        if length is not None:
            end = min(end, length)
        if end <= start:
            out.append(seg)
            continue
        out.append(replace(seg, start=start, end=end))
    return out
