"""What the route writes: JPEGs of chosen frames and crops, and ``faces.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from handlers.faces_pipeline.analyse import FrameFacts
from handlers.faces_pipeline.cluster import Person

FACES_JSON = "faces.json"
MAX_REPRESENTATIVE = 10
# The face crop: the face box grown by this fraction of its side on every side.
CROP_MARGIN = 0.4


def person_image(n: int) -> str:
    return f"person-{n}.jpg"


def person_face(n: int) -> str:
    return f"person-{n}-face.jpg"


def representative_image(k: int) -> str:
    return f"representative-{k}.jpg"


def pick_representatives(frames: list[FrameFacts], count: int) -> list[int]:
    """Up to ``count`` frame indices spread over the video: the timeline of analysed
    frames is cut into ``count`` equal spans and each span gives its best frame (one
    with faces first, then the largest best face score, then the sharpest)."""
    count = min(count, len(frames))
    chosen = []
    for k in range(count):
        span = frames[k * len(frames) // count : (k + 1) * len(frames) // count]
        best = max(
            span,
            key=lambda f: (
                bool(f.faces),
                max((face.quality.score for face in f.faces), default=0.0),
                f.sharpness,
            ),
        )
        chosen.append(best.index)
    return chosen


def face_crop(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The face with a margin around it, clipped to the frame."""
    height, width = rgb.shape[:2]
    x, y, w, h = box
    mx, my = round(w * CROP_MARGIN), round(h * CROP_MARGIN)
    x0, y0 = max(0, x - mx), max(0, y - my)
    x1, y1 = min(width, x + w + mx), min(height, y + h + my)
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def save_jpeg(rgb: np.ndarray, path: Path, quality: int) -> None:
    import dlib

    dlib.save_image(np.ascontiguousarray(rgb), str(path), quality)


def faces_document(
    *,
    duration_s: float,
    frames: list[FrameFacts],
    model: str,
    persons: list[Person],
    representative: list[int],
    params: dict[str, Any],
) -> dict[str, Any]:
    times = {f.index: f.timestamp for f in frames}
    return {
        "version": 1,
        "duration_s": round(duration_s, 3),
        "frames_analysed": len(frames),
        "faces_detected": sum(len(f.faces) for f in frames),
        "model": model,
        "params": params,
        "persons": [
            {
                "person_id": n,
                "appearances": p.appearances,
                "first_s": p.first_s,
                "last_s": p.last_s,
                "screen_time_s": p.screen_time_s,
                "best": {
                    "image": person_image(n),
                    "face": person_face(n),
                    "timestamp": p.best.timestamp,
                    "score": p.best.quality.score,
                    "box": list(p.best.box),
                    "terms": p.best.quality.terms,
                },
            }
            for n, p in enumerate(persons)
        ],
        "representative": [
            {"image": representative_image(k), "timestamp": times[i]}
            for k, i in enumerate(representative)
        ],
    }
