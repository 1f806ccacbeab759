"""The faces route's analysis speed on 1080p frames, against a naive baseline in the
same run, and the whole route on a 60 s 1080p clip against real time.

One 1080p clip of two real people (the photographs of tests/face_media.py, faces of
about 200-330 px, panning, alone and side by side) is generated once. Then:

1. **Frames/s**: the same N sampled 1080p frames (decoded once, held in memory) go
   through
   - the route's per-frame analysis (``analyse_frame``: HOG on a copy scaled by
     80 / min_face_px, landmarks and the descriptor on the full frame, one
     descriptor call per frame for all its faces), on one thread (the ratio's
     numerator: the baselines run on one thread too) and on the route's pool
     (``analyse_all``, one model set per thread, as the handler runs it), and
   - the naive baseline: the same dlib models called per frame at full resolution the
     way ``face_recognition``'s defaults do (HOG with one upsampling, i.e. scanning the
     frame at 2x, then landmarks and one descriptor call per face);
   - for transparency also the full-resolution scan without upsampling.
   Decoding is left out of all three. Target: route >= 3x the naive baseline.
2. **Real time**: ``FacesHandler.run`` with default params on the 60 s clip (probe,
   two decodes, analysis at 2 fps, clustering, JPEGs); real-time factor = 60 s / wall.

    python bench/bench_faces.py [--seconds 60] [--frames 24] [--out bench/results/faces.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import structlog  # noqa: E402

from gpu.ffmpeg_binary import ffmpeg_version  # noqa: E402
from handlers.faces import FacesHandler, FacesParams  # noqa: E402
from handlers.faces_pipeline.analyse import analyse_frame  # noqa: E402
from handlers.faces_pipeline.models import FaceModels, load_models, model_name  # noqa: E402
from handlers.faces_pipeline.pool import analyse_all, worker_count  # noqa: E402
from handlers.faces_pipeline.stream import FrameStream  # noqa: E402
from handlers.media.ffmpeg_run import file_url, media_input  # noqa: E402
from infra.log import configure_logging  # noqa: E402
from tests.face_media import Shot, make_face_video  # noqa: E402
from tests.handler_context import handler_context  # noqa: E402

log = structlog.get_logger(__name__)


def make_clip(path: Path, seconds: float) -> Path:
    """``seconds`` of 1080p30: Collins, Hopper, both, in 10 s shots (repeating)."""
    cycle = [
        Shot(("astronaut",), 10, height=720, pan=200),
        Shot(("hopper",), 10, height=600, pan=300),
        Shot(("astronaut", "hopper"), 10, height=640, pan=150),
    ]
    shots, left = [], seconds
    while left > 0:
        shot = cycle[len(shots) % len(cycle)]
        shots.append(Shot(shot.photos, min(shot.seconds, left), shot.height, 0, shot.pan))
        left -= shot.seconds
    return make_face_video(path, shots, size=(1920, 1080), fps=30)


def sample_frames(clip: Path, count: int, work: Path) -> list[np.ndarray]:
    """``count`` frames spread over the clip at full size, through the route's reader."""
    import ffmpeg

    v = media_input(clip).video.filter("fps", "1/2.5")
    fifo = work / "sample.ppm"
    args = ffmpeg.output(
        v, file_url(fifo), f="image2pipe", vcodec="ppm", pix_fmt="rgb24", **{"frames:v": count}
    ).get_args()
    with FrameStream(args, fifo, deadline=time.monotonic() + 300, caps=None) as stream:
        return [frame.copy() for frame in stream]


def naive_frame(rgb: np.ndarray, models: FaceModels, upsample: int) -> int:
    """face_recognition's defaults: full-frame HOG, then per face landmarks + descriptor."""
    faces = 0
    for rect in models.detector(rgb, upsample):
        shape = models.landmarks(rgb, rect)
        models.descriptor.compute_face_descriptor(rgb, shape)
        faces += 1
    return faces


def timed(fn: Any, frames: list[np.ndarray]) -> tuple[float, int]:
    started = time.perf_counter()
    faces = sum(fn(i, f) for i, f in enumerate(frames))
    return time.perf_counter() - started, faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/faces.json")
    args = parser.parse_args()
    configure_logging(level="warning")

    with tempfile.TemporaryDirectory(prefix="bench-faces-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        clip = make_clip(work / "cast.mp4", args.seconds)
        print(f"clip: {args.seconds:.0f} s 1080p30 in {time.perf_counter() - t0:.1f} s")
        models = load_models(points=FacesParams().landmarks)
        frames = sample_frames(clip, args.frames, work)
        params = FacesParams()
        min_face = params.min_face_px

        def route(i: int, rgb: np.ndarray) -> int:
            facts = analyse_frame(
                rgb, i, i / 2, models, min_face_px=min_face, min_confidence=params.min_confidence
            )
            return len(facts.faces)

        model_sets = [load_models(points=params.landmarks) for _ in range(worker_count())]

        def pooled(frames: list[np.ndarray]) -> int:
            analyse = lambda rgb, i, m: analyse_frame(  # noqa: E731
                rgb, i, i / 2, m, min_face_px=min_face, min_confidence=params.min_confidence
            )
            return sum(len(facts.faces) for _, facts in analyse_all(frames, model_sets, analyse))

        timed(route, frames[:2])  # warm caches
        pooled(frames[:4])  # and every model set of the pool
        results: dict[str, dict[str, Any]] = {}
        started = time.perf_counter()
        faces = pooled(frames)
        elapsed = time.perf_counter() - started
        results[f"route_{len(model_sets)}_threads"] = {
            "seconds": round(elapsed, 3),
            "frames_per_s": round(len(frames) / elapsed, 2),
            "faces_found": faces,
        }
        print(
            f"route, {len(model_sets)} threads {len(frames) / elapsed:6.2f} frames/s faces={faces}"
        )
        for name, fn in (
            ("route", route),
            ("naive_upsample1", lambda i, f: naive_frame(f, models, 1)),
            ("naive_upsample0", lambda i, f: naive_frame(f, models, 0)),
        ):
            elapsed, faces = timed(fn, frames)
            results[name] = {
                "seconds": round(elapsed, 3),
                "frames_per_s": round(len(frames) / elapsed, 2),
                "faces_found": faces,
            }
            print(f"{name:16s} {len(frames) / elapsed:6.2f} frames/s  faces={faces}")
        speedup = results["route"]["frames_per_s"] / results["naive_upsample1"]["frames_per_s"]
        speedup0 = results["route"]["frames_per_s"] / results["naive_upsample0"]["frames_per_s"]
        threaded = next(v for k, v in results.items() if k.endswith("_threads"))
        speedup_t = threaded["frames_per_s"] / results["naive_upsample1"]["frames_per_s"]
        print(
            f"route vs naive (face_recognition defaults): {speedup:.2f}x; vs full-res no "
            f"upsampling: {speedup0:.2f}x; threaded vs naive: {speedup_t:.2f}x"
        )

        progress: list[tuple[float, str]] = []
        ctx = handler_context(
            work / "job", clip, params, deadline_s=3600, progress=progress, cache={}
        )
        t0 = time.perf_counter()
        result = FacesHandler().run(ctx)
        wall = time.perf_counter() - t0
        doc = json.loads((ctx.output_dir / "faces.json").read_text())
        print(
            f"route on {args.seconds:.0f} s 1080p: {wall:.1f} s wall, "
            f"{args.seconds / wall:.2f}x real time, persons={len(doc['persons'])}, "
            f"frames={doc['frames_analysed']}"
        )

    report = {
        "bench": "faces",
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "ffmpeg": ffmpeg_version(),
        },
        "model": model_name(FacesParams().landmarks),
        "input": {"width": 1920, "height": 1080, "fps": 30, "seconds": args.seconds},
        "analysis": {
            "frames": len(frames),
            "min_face_px": min_face,
            "results": results,
            "speedup_vs_naive": round(speedup, 2),
            "speedup_vs_full_res_no_upsample": round(speedup0, 2),
            "speedup_threaded_vs_naive": round(speedup_t, 2),
            "target": ">= 3x vs naive",
            "naive": "dlib per frame at full resolution, HOG upsample=1 (face_recognition's "
            "default), landmarks + one descriptor call per face",
        },
        "route": {
            "wall_s": round(wall, 2),
            "realtime_factor": round(args.seconds / wall, 2),
            "frames_analysed": doc["frames_analysed"],
            "faces_detected": doc["faces_detected"],
            "persons": len(doc["persons"]),
            "screen_time_s": [p["screen_time_s"] for p in doc["persons"]],
            "outputs": len(result.outputs),
            "params": FacesParams().model_dump(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
