"""The ``faces`` route: the best frame of every person in a video, and a few
representative frames, from dlib's face models (the ``face-recognition-models`` wheel).

Pass 1 streams frames sampled at ``fps`` (default 2) from ffmpeg, one at a time
(handlers/faces_pipeline/stream.py), and for each finds faces on a downscaled copy,
then landmarks, a quality score and a 128-d descriptor on the full frame
(handlers/faces_pipeline/analyse.py). Only numbers are kept: no frame is held. The
faces are then clustered into persons by identity (Chinese whispers), persons are
ordered by screen time, and representative frames are chosen across the timeline.
Pass 2 decodes the same sampled frames again up to the last one needed and writes
``person-<n>.jpg``, ``person-<n>-face.jpg`` and ``representative-<k>.jpg``. A JPEG
or PNG still is one frame (one pass). ``faces.json`` lists it all (docs/routes.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import ffmpeg
import numpy as np
from pydantic import Field

from handlers.exceptions import InputError
from handlers.faces_pipeline.analyse import FrameFacts, analyse_frame
from handlers.faces_pipeline.cluster import cluster_faces, make_persons
from handlers.faces_pipeline.models import FaceModels, load_models, model_name
from handlers.faces_pipeline.outputs import (
    FACES_JSON,
    MAX_REPRESENTATIVE,
    face_crop,
    faces_document,
    person_face,
    person_image,
    pick_representatives,
    representative_image,
    save_jpeg,
)
from handlers.faces_pipeline.pool import analyse_all, worker_count
from handlers.faces_pipeline.stream import FrameStream
from handlers.media.checks import (
    MediaLimits,
    check_complete,
    coerce_params,
    decode_caps,
    display_size,
    fit_even,
    probe_input,
)
from handlers.media.decode_caps import DecodeCaps
from handlers.media.encode import prepare_video
from handlers.media.extensions import VIDEO_EXTENSIONS
from handlers.media.ffmpeg_run import ffmpeg_number, file_url, media_input
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile

STILL_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
_STILL_DEMUXERS = {b"\xff\xd8\xff": "jpeg_pipe", b"\x89PNG\r\n\x1a\n": "png_pipe"}
_BATCH = 8  # frames per progress heartbeat


class FacesParams(MediaLimits):
    fps: float = Field(2.0, ge=0.01, le=30, description="frames analysed per second of video")
    max_frames: int = Field(
        1200, ge=1, le=20_000, description="at most this many frames are analysed"
    )
    min_face_px: int = Field(
        100, ge=40, le=4096, description="faces smaller than this (side, source pixels) are dropped"
    )
    min_confidence: float = Field(
        0.0, ge=-1, le=5, description="detections scoring lower (HOG SVM score) are dropped"
    )
    cluster_threshold: float = Field(
        0.5, gt=0, le=1.5, description="descriptor distance under which two faces are one person"
    )
    max_persons: int = Field(20, ge=1, le=200, description="keep the persons most on screen")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the images")
    landmarks: Literal[5, 68] = Field(
        5,
        description="landmark model: 5 (CC0) or 68 (adds the eyes-open term; its training "
        "data's licence excludes commercial use)",
    )


class FacesHandler:
    name: ClassVar[str] = "faces"
    version: ClassVar[str] = "1.0.0"
    # dlib is not in the ffmpeg image; CPU dlib (no CUDA in dlib-bin) does the work.
    modal_image: ClassVar[str] = "torch"
    gpu_kind: ClassVar[str] = "video"
    default_routes: ClassVar[dict[str, dict[str, Any]]] = {"faces": {}}
    Params: ClassVar[type[HandlerParams]] = FacesParams
    extensions: ClassVar[frozenset[str]] = VIDEO_EXTENSIONS | STILL_EXTENSIONS

    def warm_up(self, cache: dict[str, Any], device: str, params: HandlerParams) -> None:
        points = coerce_params(params, FacesParams).landmarks
        for slot in range(worker_count()):
            load_models(cache, points, slot)

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params = coerce_params(ctx.params, FacesParams)
        log = ctx.log.bind(handler=self.name)
        model_sets = [
            load_models(ctx.cache, params.landmarks, slot) for slot in range(worker_count())
        ]
        still = ctx.input_path.suffix.lower() in STILL_EXTENSIONS
        source = _still_source(ctx, params) if still else _video_source(ctx, params)

        def analyse(rgb: np.ndarray, i: int, models: FaceModels) -> FrameFacts:
            _check_deadline(ctx)
            if still and rgb.shape[0] * rgb.shape[1] > params.max_input_pixels:
                raise InputError(
                    f"the image is {rgb.shape[1]}x{rgb.shape[0]}, over the limit of "
                    f"{params.max_input_pixels:,} pixels (max_input_pixels)"
                )
            timestamp = 0.0 if still else round(i / params.fps, 3)
            return analyse_frame(
                rgb,
                i,
                timestamp,
                models,
                min_face_px=params.min_face_px,
                min_confidence=params.min_confidence,
            )

        ctx.progress(0.02, "analyse")
        frames: list[FrameFacts] = []
        kept_still = None
        fifo = ctx.work_dir / "pass1.ppm"
        try:
            with FrameStream(
                source.args(fifo), fifo, deadline=ctx.deadline, caps=source.caps
            ) as stream:
                for rgb, facts in analyse_all(stream, model_sets, analyse):
                    frames.append(facts)
                    if still:
                        kept_still = rgb
                    if len(frames) % _BATCH == 0:
                        done = min(1.0, len(frames) / source.frames)
                        ctx.progress(0.02 + 0.78 * done, "analyse")
        except InputError as exc:
            # The decoder refused the still for its size: it has no "mid-stream".
            if still and "max_input_pixels" in str(exc):
                raise InputError(
                    f"the image is over the limit of {params.max_input_pixels:,} pixels "
                    "(max_input_pixels)"
                ) from exc
            raise
        if not frames:
            raise InputError("no frames could be decoded from the input")
        if not still:
            check_complete(source.expected_s, len(frames) / params.fps)

        ctx.progress(0.8, "cluster")
        faces = [face for f in frames for face in f.faces]
        groups = cluster_faces(faces, params.cluster_threshold)
        persons = make_persons(
            groups,
            seconds_per_frame=0.0 if still else 1 / params.fps,
            max_persons=params.max_persons,
        )
        reps = pick_representatives(frames, MAX_REPRESENTATIVE)

        ctx.progress(0.85, "write")
        wanted: dict[int, list[tuple[str, Any]]] = {}
        for n, p in enumerate(persons):
            wanted.setdefault(p.best.frame, []).append(("person", n))
        for k, i in enumerate(reps):
            wanted.setdefault(i, []).append(("representative", k))
        out = ctx.output_dir
        written: list[OutputFile] = []

        def write(index: int, rgb: Any) -> None:
            for kind, n in wanted.get(index, []):
                if kind == "person":
                    save_jpeg(rgb, out / person_image(n), params.jpeg_quality)
                    crop = face_crop(rgb, persons[n].best.box)
                    save_jpeg(crop, out / person_face(n), params.jpeg_quality)
                else:
                    save_jpeg(rgb, out / representative_image(n), params.jpeg_quality)

        try:
            if still:
                write(0, kept_still)
            elif wanted:
                last = max(wanted)
                fifo = ctx.work_dir / "pass2.ppm"
                args = replace(source, frames=last + 1).args(fifo)
                with FrameStream(args, fifo, deadline=ctx.deadline, caps=source.caps) as stream:
                    for i, rgb in enumerate(stream):
                        _check_deadline(ctx)
                        write(i, rgb)
            for n in range(len(persons)):
                written.append(OutputFile(person_image(n), out / person_image(n), "person",
                                          "image/jpeg"))  # fmt: skip
                written.append(OutputFile(person_face(n), out / person_face(n), "person-face",
                                          "image/jpeg"))  # fmt: skip
            for k in range(len(reps)):
                written.append(OutputFile(representative_image(k), out / representative_image(k),
                                          "representative", "image/jpeg"))  # fmt: skip
            missing = [f.name for f in written if not f.path.is_file()]
            if missing:
                raise InputError(
                    f"the second decode of the video gave fewer frames than the first "
                    f"(missing {missing[0]}): is the file changing or corrupt?"
                )
        except BaseException:
            for path in out.iterdir():
                path.unlink(missing_ok=True)
            raise

        duration = 0.0 if still else (source.duration_s or len(frames) / params.fps)
        doc = faces_document(
            duration_s=duration,
            frames=frames,
            model=model_name(params.landmarks),
            persons=persons,
            representative=reps,
            params={"fps": params.fps, "min_face_px": params.min_face_px,
                    "cluster_threshold": params.cluster_threshold},
        )  # fmt: skip
        (out / FACES_JSON).write_text(json.dumps(doc, indent=1))
        written.append(OutputFile(FACES_JSON, out / FACES_JSON, "faces-index", "application/json"))
        log.info(
            "faces_done",
            frames=len(frames),
            faces=len(faces),
            persons=len(persons),
            clusters=len(groups),
        )
        summary = {
            "persons": len(persons),
            "frames_analysed": len(frames),
            "faces_detected": len(faces),
            "model": model_name(params.landmarks),
        }
        return HandlerResult(outputs=written, media=source.media, summary=summary)


@dataclass(frozen=True, slots=True)
class _Source:
    """One decode of the input: an ffmpeg stream of sampled frames and what is known of it."""

    stream: Any  # the ffmpeg-python video stream, filters applied
    frames: int  # at most this many frames
    caps: DecodeCaps
    media: dict[str, Any]  # the manifest's input facts
    expected_s: float | None  # how much should decode (the truncation check)
    duration_s: float | None

    def args(self, fifo: Path) -> list[str]:
        """The command that writes the frames as a PPM stream into ``fifo``."""
        out = ffmpeg.output(
            self.stream,
            file_url(fifo),
            f="image2pipe",
            vcodec="ppm",
            pix_fmt="rgb24",
            **{"frames:v": self.frames},
        )
        return out.get_args()


def _still_source(ctx: HandlerContext, params: FacesParams) -> _Source:
    # A still is no container the probe reads: ffmpeg's image demuxers decode it,
    # with the pixel cap on the decoder as for video.
    caps = DecodeCaps(max_pixels=params.max_input_pixels)
    # The demuxer is forced from the file's magic bytes: by its name alone ffmpeg picks
    # image2, which reads numbered sequences of other files.
    with ctx.input_path.open("rb") as f:
        head = f.read(8)
    demuxer = next((d for magic, d in _STILL_DEMUXERS.items() if head.startswith(magic)), None)
    if demuxer is None:
        raise InputError("not a JPEG or PNG image (the faces route takes videos and stills)")
    src = media_input(ctx.input_path, format_whitelist=(demuxer,), caps=caps, f=demuxer)
    return _Source(
        src.video, frames=1, caps=caps, media={"kind": "image"}, expected_s=None, duration_s=0.0
    )


def _video_source(ctx: HandlerContext, params: FacesParams) -> _Source:
    probed = probe_input(ctx, "faces", params, needs="video")
    info, video = probed.info, probed.video
    assert video is not None  # needs="video"
    size = fit_even(*display_size(video))
    # As the frames route: reading stops once max_frames are out, and frame i at i/fps
    # lasts 1/fps, so the sampled output may reach that far past the input's end.
    caps = replace(decode_caps(params, info), slack_s=1 / params.fps)
    read_s = min(params.max_frames / params.fps, float(caps.input_t() or 0))
    expected = min(info.duration_s, read_s, params.max_duration_s) if info.duration_s else None
    src = media_input(ctx.input_path, caps=caps, t=ffmpeg_number(read_s, 3))
    v = prepare_video(src[str(video.index)], video).filter("setpts", "PTS-STARTPTS")
    # round=up: frame i is the picture on screen at i/fps (as the frames route).
    v = v.filter("fps", ffmpeg_number(params.fps), round="up")
    v = v.filter("scale", size[0], size[1]).filter("setsar", 1)
    return _Source(
        v,
        frames=params.max_frames,
        caps=caps,
        media=info.as_manifest_dict(),
        expected_s=expected,
        duration_s=info.duration_s,
    )


def _check_deadline(ctx: HandlerContext) -> None:
    if time.monotonic() > ctx.deadline:
        raise TimeoutError("face analysis stopped: the job deadline passed")
