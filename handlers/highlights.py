"""The ``highlights`` route: score every second by crowd noise and motion, cut a reel.

1. Analysis (one ffmpeg run, one decode): the audio as mono float PCM and the
   video as 64x36 grey frames at 4 fps, both into the scratch dir.
2. Per second: loudness (RMS in dBFS, scaled 0..1 between the clip's 10th
   percentile and its loudest second: crowd noise is loud relative to the rest
   of the same match) and motion (mean absolute difference between successive
   grey frames, scaled 0..1 by the clip's maximum; a scene cut is a large
   difference). ``score = audio_weight * audio + motion_weight * motion``,
   lightly smoothed.
3. Peak picking: local maxima above ``min_score``, strongest first; each grows
   while its neighbours stay above ``keep_ratio`` of the peak, gets ``lead_s``
   of run-up before it (the play comes before the cheer), and is clamped to
   ``[min_segment_s, max_segment_s]`` without overlapping a stronger segment.
4. The reel: the best segments that fit ``target_length_s``, in time order (with
   ``snap_to_beats``, their ends moved to the nearest beat), cut
   from the source (input seeking per segment, so a long match is not decoded
   twice) and joined into one H.264/AAC MP4.

``beats.json`` holds the tempo and beat times of the same decoded audio
(handlers/media/beats.py, librosa's beat tracker). Everything is a pure function
of the decoded samples: the same input gives
the same ``highlights.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import ffmpeg
import numpy as np
from ffmpeg.nodes import FilterableStream
from pydantic import Field, model_validator

from gpu.encoders import VideoEncoderChoice
from handlers.media.beats import (
    BEATS_NAME,
    Beats,
    snap,
    track_beats,
    warm_up_beats,
    write_beats,
)
from handlers.media.checks import (
    EvenPixels,
    MediaLimits,
    check_complete,
    coerce_params,
    decode_caps,
    display_size,
    fit_even,
    probe_input,
)
from handlers.media.decode_caps import DecodeCaps
from handlers.media.encode import AacBitrate, VideoQuality, encode_video, prepare_video
from handlers.media.extensions import VIDEO_EXTENSIONS
from handlers.media.ffmpeg_run import (
    ffmpeg_number,
    file_url,
    media_input,
    option_kwargs,
    run_ffmpeg,
)
from handlers.media.probe import MediaInfo, VideoStream, probe
from handlers.media.waveform import pcm_output, read_pcm
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile

HIGHLIGHTS_JSON = "highlights.json"
REEL_NAME = "highlights.mp4"
PCM_RATE = 16_000
MOTION_FPS = 4
MOTION_SIZE = (64, 36)
_SILENCE_DB = -90.0
_SCENE_CUT = 40.0  # mean grey difference (0..255) that is a cut, not motion
NEEDS_SOUND = "scores crowd noise and needs a video with sound (this file is silent)"


class HighlightsParams(MediaLimits):
    target_length_s: float = Field(45, gt=0, le=3600, description="reel length at most")
    min_segment_s: float = Field(4, gt=0, le=600, description="shortest segment")
    max_segment_s: float = Field(15, gt=0, le=600, description="longest segment")
    lead_s: float = Field(2, ge=0, le=60, description="run-up kept before each peak")
    min_score: float = Field(0.35, ge=0, le=1, description="weaker peaks are ignored")
    keep_ratio: float = Field(
        0.6, gt=0, le=1, description="a segment grows while the score stays above this x peak"
    )
    audio_weight: float = Field(0.6, ge=0, le=1, description="weight of loudness in the score")
    motion_weight: float = Field(0.4, ge=0, le=1, description="weight of motion in the score")
    max_segments: int = Field(50, ge=1, le=500, description="segments listed at most")
    snap_to_beats: bool = Field(False, description="reel segment ends move to the nearest beat")
    short_side: EvenPixels = Field(1080, ge=144, le=4320, description="reel short side at most")
    quality: VideoQuality = None
    audio_bitrate: AacBitrate = "160k"

    @model_validator(mode="after")
    def _consistent(self) -> HighlightsParams:
        if self.min_segment_s > self.max_segment_s:
            raise ValueError("min_segment_s must not exceed max_segment_s")
        if self.audio_weight + self.motion_weight <= 0:
            raise ValueError("audio_weight + motion_weight must be above 0")
        return self


@dataclass(frozen=True, slots=True)
class Segment:
    start: float
    end: float
    score: float  # the peak's smoothed score, 0..1
    audio_peak: float  # loudest second in the segment, 0..1
    motion: float  # mean motion over the segment, 0..1
    peak_s: float  # the second the peak is in
    audio_peak_dbfs: float
    scene_changes: int


@dataclass(frozen=True, slots=True)
class Scores:
    audio: np.ndarray  # per second, 0..1
    audio_db: np.ndarray
    motion: np.ndarray  # per second, 0..1
    cuts: np.ndarray  # scene cuts per second
    score: np.ndarray  # smoothed combined score


class HighlightsHandler:
    name: ClassVar[str] = "highlights"
    version: ClassVar[str] = "1.1.0"
    # Self-description (handlers.protocol.HandlerInfo): Modal image, GPU, default routes.
    modal_image: ClassVar[str] = "ffmpeg"
    gpu_kind: ClassVar[str] = "video"
    default_routes: ClassVar[dict[str, dict[str, Any]]] = {"highlights": {}}
    Params: ClassVar[type[HandlerParams]] = HighlightsParams
    extensions: ClassVar[frozenset[str]] = VIDEO_EXTENSIONS

    def warm_up(self, cache: dict[str, Any], device: str, params: HandlerParams) -> None:
        warm_up_beats()  # the beat tracker's numba kernels compile once per process

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params = coerce_params(ctx.params, HighlightsParams)
        log = ctx.log.bind(handler=self.name)
        probed = probe_input(ctx, self.name, params, needs="video", audio_reason=NEEDS_SOUND)
        info, video = probed.info, probed.video
        assert video is not None  # needs="video"
        duration = min(info.duration_s, params.max_duration_s) if info.duration_s else None

        caps = decode_caps(params, info)
        pcm, gray = analyse(ctx, info, video, params, duration, caps)
        samples = read_pcm(pcm)
        decoded_s = len(samples) / PCM_RATE
        check_complete(duration, decoded_s)
        length = duration or decoded_s
        frames = np.memmap(gray, dtype=np.uint8, mode="r") if gray.stat().st_size else np.zeros(0)
        scores = score_seconds(samples, frames, params)
        segments = pick_segments(scores, length, params)
        reel = choose_reel(segments, params)
        beats = track_beats(samples, PCM_RATE)
        if params.snap_to_beats:
            reel = snap_reel(reel, beats, length)
        pcm.unlink(missing_ok=True)
        gray.unlink(missing_ok=True)
        json_path = ctx.output_dir / HIGHLIGHTS_JSON
        beats_path = write_beats(beats, ctx.output_dir / BEATS_NAME)
        outputs = [
            OutputFile(HIGHLIGHTS_JSON, json_path, "highlights", "application/json"),
            OutputFile(BEATS_NAME, beats_path, "beats", "application/json"),
        ]
        runtime: dict[str, Any] = {}
        out: MediaInfo | None = None
        if reel:
            ctx.progress(0.5, "encode")
            reel_path = ctx.output_dir / REEL_NAME
            size = fit_even(*display_size(video), max_short=params.short_side)
            runtime = encode_video(
                device=ctx.device,
                build=lambda choice: build_reel_args(
                    ctx.input_path, reel_path, info, video, params, choice, reel, size
                ),
                outputs=[reel_path],
                deadline=ctx.deadline,
                duration_s=sum(s.end - s.start for s in reel),
                progress=lambda f: ctx.progress(0.5 + 0.5 * f, "encode"),
                caps=reel_caps(params, info),
            )
            out = probe(reel_path, deadline=ctx.deadline)
            outputs.append(OutputFile(REEL_NAME, reel_path, "highlight-reel", "video/mp4"))
        else:
            # Nothing stands out (a static shot, a steady hum): say so, with no reel.
            log.info("no_highlights", min_score=params.min_score)
        doc = highlights_document(segments, reel, scores, length, params, out)
        json_path.write_text(json.dumps(doc, indent=1))
        reel_s = out.duration_s if out else None
        log.info("highlights_done", segments=len(segments), reel=len(reel), reel_s=reel_s)
        summary = {k: v for k, v in doc.items() if k not in ("segments", "per_second")}
        summary.update(tempo_bpm=beats.tempo_bpm, beat_count=len(beats.times))
        return HandlerResult(
            outputs=outputs, media=info.as_manifest_dict(), runtime=runtime, summary=summary
        )


def analyse(
    ctx: HandlerContext,
    info: MediaInfo,
    video: VideoStream,
    params: HighlightsParams,
    duration: float | None,
    caps: DecodeCaps,
) -> tuple[Path, Path]:
    """Decode once: mono PCM and small grey frames for motion, into the scratch dir."""
    pcm, gray = ctx.work_dir / "audio.f32", ctx.work_dir / "motion.gray"
    assert info.audio is not None  # the route requires sound
    src = media_input(ctx.input_path, caps=caps)
    v = src[str(video.index)].filter("setpts", "PTS-STARTPTS")
    v = (
        v.filter("fps", MOTION_FPS, round="up")
        .filter("scale", *MOTION_SIZE)
        .filter("format", "gray")
    )
    outs = [
        pcm_output(src[str(info.audio.index)], pcm, PCM_RATE, caps=caps),
        ffmpeg.output(v, file_url(gray), f="rawvideo", t=caps.output_t()),
    ]
    run_ffmpeg(
        ffmpeg.merge_outputs(*outs).get_args(),
        deadline=ctx.deadline,
        duration_s=duration,
        progress=lambda f: ctx.progress(0.45 * f, "analyse"),
        caps=caps,
    )
    return pcm, gray


def score_seconds(pcm: np.ndarray, gray: np.ndarray, params: HighlightsParams) -> Scores:
    """Per-second loudness, motion and combined score (pure numpy, deterministic)."""
    seconds = max(1, math.ceil(len(pcm) / PCM_RATE))
    db = np.full(seconds, _SILENCE_DB)
    for i in range(seconds):
        chunk = np.asarray(pcm[i * PCM_RATE : (i + 1) * PCM_RATE], dtype=np.float64)
        if len(chunk):
            rms = math.sqrt(float(np.mean(chunk * chunk)))
            db[i] = max(_SILENCE_DB, 20 * math.log10(rms)) if rms > 0 else _SILENCE_DB
    floor, top = float(np.percentile(db, 10)), float(db.max())
    # A clip whose loudness barely changes has no audio highlights at all.
    audio = np.clip((db - floor) / (top - floor), 0, 1) if top - floor >= 3 else np.zeros(seconds)

    diffs = frame_differences(gray)
    sec = np.minimum(seconds - 1, np.arange(1, len(diffs) + 1) // MOTION_FPS)  # diff j: j-1 -> j
    counts = np.bincount(sec, minlength=seconds)[:seconds]
    total_diff = np.bincount(sec, weights=diffs, minlength=seconds)[:seconds]
    cuts = np.bincount(sec, weights=diffs >= _SCENE_CUT, minlength=seconds)[:seconds]
    raw = np.divide(total_diff, counts, out=np.zeros(seconds), where=counts > 0)
    motion = raw / raw.max() if raw.max() >= 1.0 else np.zeros(seconds)

    total = params.audio_weight + params.motion_weight
    combined = (params.audio_weight * audio + params.motion_weight * motion) / total
    padded = np.pad(combined, 1, mode="edge")
    score = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return Scores(audio=audio, audio_db=db, motion=motion, cuts=cuts.astype(np.int64), score=score)


def frame_differences(gray: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Mean absolute difference between successive grey frames, read in chunks."""
    size = MOTION_SIZE[0] * MOTION_SIZE[1]
    n = len(gray) // size
    diffs = np.zeros(max(0, n - 1))
    for first in range(0, n - 1, chunk):
        last = min(n, first + chunk + 1)  # one frame of overlap joins the chunks
        block = np.asarray(gray[first * size : last * size]).reshape(-1, size).astype(np.int16)
        diffs[first : last - 1] = np.abs(np.diff(block, axis=0)).mean(axis=1)
    return diffs


def pick_segments(scores: Scores, length: float, params: HighlightsParams) -> list[Segment]:
    """Non-overlapping segments around the strongest peaks, sorted by start time."""
    s = scores.score
    n = len(s)
    peaks = [
        i
        for i in range(n)
        if s[i] >= params.min_score
        and (i == 0 or s[i] >= s[i - 1])
        and (i == n - 1 or s[i] > s[i + 1])
    ]
    peaks.sort(key=lambda i: (-round(float(s[i]), 9), i))
    taken: list[tuple[float, float]] = []
    segments: list[Segment] = []
    for i in peaks:
        if len(segments) >= params.max_segments:
            break
        if any(a <= i < b for a, b in taken):
            continue
        lo, hi = i, i + 1  # whole seconds [lo, hi)
        while lo > 0 and s[lo - 1] >= params.keep_ratio * s[i] and hi - lo < params.max_segment_s:
            lo -= 1
        while hi < n and s[hi] >= params.keep_ratio * s[i] and hi - lo < params.max_segment_s:
            hi += 1
        start = max(0.0, lo - params.lead_s)
        end = float(min(hi, length))
        if end - start < params.min_segment_s:  # grow around the middle, inside the clip
            mid = (start + end) / 2
            start = max(0.0, min(mid - params.min_segment_s / 2, length - params.min_segment_s))
            end = min(length, start + params.min_segment_s)
        if end - start > params.max_segment_s:  # the run-up goes first
            start = end - params.max_segment_s
        for a, b in taken:  # a stronger segment owns its seconds
            if a < end and start < b:
                if a <= i:
                    start = max(start, b)
                else:
                    end = min(end, a)
        if end - start < min(1.0, length):
            continue
        taken.append((start, end))
        first, last = int(start), max(int(start) + 1, math.ceil(end))
        segments.append(
            Segment(
                start=round(float(start), 3),
                end=round(float(end), 3),
                score=round(float(s[i]), 3),
                audio_peak=round(float(scores.audio[first:last].max()), 3),
                motion=round(float(scores.motion[first:last].mean()), 3),
                peak_s=float(i),
                audio_peak_dbfs=round(float(scores.audio_db[first:last].max()), 2),
                scene_changes=int(scores.cuts[first:last].sum()),
            )
        )
    return sorted(segments, key=lambda seg: seg.start)


def choose_reel(segments: list[Segment], params: HighlightsParams) -> list[Segment]:
    """The best segments whose total fits target_length_s, in time order."""
    chosen: list[Segment] = []
    total = 0.0
    for seg in sorted(segments, key=lambda x: (-x.score, x.start)):
        if total + (seg.end - seg.start) <= params.target_length_s + 1e-6:
            chosen.append(seg)
            total += seg.end - seg.start
    if not chosen and segments:  # every segment is longer than the target: trim the best
        best = max(segments, key=lambda x: (x.score, -x.start))
        start = max(best.start, min(best.peak_s, best.end - params.target_length_s))
        chosen = [Segment(**{**asdict(best), "start": start,
                             "end": round(start + params.target_length_s, 3)})]  # fmt: skip
    return sorted(chosen, key=lambda x: x.start)


def snap_reel(reel: list[Segment], beats: Beats, length: float) -> list[Segment]:
    """Reel segments whose ends moved to the nearest beat (kept as they were where both
    ends would meet on one beat, or overlap the segment before)."""
    snapped: list[Segment] = []
    for seg in reel:
        start = snap(seg.start, beats.times)
        end = min(snap(seg.end, beats.times), length)
        if end <= start or (snapped and start < snapped[-1].end):
            snapped.append(seg)
        else:
            snapped.append(replace(seg, start=round(start, 3), end=round(end, 3)))
    return snapped


def reel_caps(params: HighlightsParams, info: MediaInfo) -> DecodeCaps:
    """The reel's segments lie inside what the analysis decoded: the frame cap only."""
    return replace(decode_caps(params, info), max_duration_s=None)


def build_reel_args(
    input_path: Path,
    out_path: Path,
    info: MediaInfo,
    video: VideoStream,
    params: HighlightsParams,
    choice: VideoEncoderChoice,
    reel: list[Segment],
    size: tuple[int, int],
) -> list[str]:
    """ffmpeg arguments (no binary): each segment is its own seeked input, then concat."""
    assert info.audio is not None  # the route requires sound
    audio_index = str(info.audio.index)
    parts: list[FilterableStream] = []
    for seg in reel:
        src = media_input(
            input_path,
            hw_args=choice.input_args(),
            caps=reel_caps(params, info),
            ss=ffmpeg_number(seg.start, 3),
            t=ffmpeg_number(seg.end - seg.start, 3),
        )
        v = prepare_video(src[str(video.index)], video)
        v = v.filter("scale", size[0], size[1]).filter("setsar", 1).filter("format", "yuv420p")
        a = src[audio_index].filter("aresample", 48000).filter("aformat", channel_layouts="stereo")
        parts += [v, a]
    joined = ffmpeg.concat(*parts, v=1, a=1).node
    opts: dict[str, Any] = option_kwargs(choice.codec_args(params.quality))
    opts.update({"c:a": "aac", "b:a": params.audio_bitrate, "movflags": "+faststart", "sn": None})
    return ffmpeg.output(joined[0], joined[1], file_url(out_path), **opts).get_args()


def highlights_document(
    segments: list[Segment],
    reel: list[Segment],
    scores: Scores,
    length: float,
    params: HighlightsParams,
    out: MediaInfo | None,
) -> dict[str, Any]:
    in_reel = {(s.start, s.end) for s in reel}
    return {
        "version": 1,
        "duration_s": round(length, 3),
        "segment_count": len(segments),
        "reel": None
        if out is None
        else {
            "name": REEL_NAME,
            "segments": [[s.start, s.end] for s in reel],
            "length_s": round(sum(s.end - s.start for s in reel), 3),
            "duration_s": None if out.duration_s is None else round(out.duration_s, 3),
            "target_length_s": params.target_length_s,
        },
        "segments": [
            {**asdict(s), "in_reel": (s.start, s.end) in in_reel or _overlaps(s, reel)}
            for s in segments
        ],
        "per_second": {
            "score": [round(float(x), 3) for x in scores.score],
            "audio": [round(float(x), 3) for x in scores.audio],
            "motion": [round(float(x), 3) for x in scores.motion],
        },
    }


def _overlaps(seg: Segment, reel: list[Segment]) -> bool:
    return any(r.start < seg.end and seg.start < r.end for r in reel)
