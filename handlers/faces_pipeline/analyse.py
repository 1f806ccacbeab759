"""Faces in one frame: detect on a downscaled copy, then landmarks, score and descriptor
on the full-resolution frame.

HOG detection costs in proportion to the pixels scanned, and its 80x80 window finds
faces of about 80 px and up: scanning a copy scaled by ``80 / min_face_px`` finds
every face the route keeps at a fraction of the cost of the full frame. Landmarks and
the 128-d descriptor only read the face region, so they run on the full frame: the
face crop and the alignment keep every source pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from handlers.faces_pipeline.models import FaceModels
from handlers.faces_pipeline.quality import Quality, gray, score_face, sharpness

# The HOG detector's scanning window: the smallest face it finds without upsampling.
DETECTOR_MIN_PX = 80
# The detection copy's long side at most: a 4K frame is scanned at 1080p size (its
# smallest face found is then 160 px: the same share of the frame as 80 px in 1080p).
DETECT_MAX_SIDE = 1920


@dataclass(frozen=True, slots=True)
class Face:
    frame: int  # index of the analysed frame
    timestamp: float
    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels
    detection_score: float
    quality: Quality
    descriptor: np.ndarray  # 128 float32


@dataclass(slots=True)
class FrameFacts:
    index: int
    timestamp: float
    sharpness: float  # of the whole (downscaled) frame: for representative frames
    faces: list[Face] = field(default_factory=list)


def detect_scale(width: int, height: int, min_face_px: int) -> float:
    """The factor the detection copy is scaled by (at most 1: never upsampled)."""
    return min(1.0, DETECTOR_MIN_PX / min_face_px, DETECT_MAX_SIDE / max(width, height))


def analyse_frame(
    rgb: np.ndarray,
    index: int,
    timestamp: float,
    models: FaceModels,
    *,
    min_face_px: int,
    min_confidence: float,
) -> FrameFacts:
    import dlib

    height, width = rgb.shape[:2]
    scale = detect_scale(width, height, min_face_px)
    if scale < 1.0:
        rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
        small = gray(dlib.resize_image(rgb, rows, cols))
    else:
        small = gray(rgb)
    rects, scores, _ = models.detector.run(small, 0, min_confidence)
    facts = FrameFacts(index, timestamp, sharpness(small))
    kept: list[tuple[tuple[int, int, int, int], float, object]] = []
    for rect, det_score in zip(rects, scores, strict=True):
        x0, y0 = math.floor(rect.left() / scale), math.floor(rect.top() / scale)
        x1, y1 = math.ceil((rect.right() + 1) / scale), math.ceil((rect.bottom() + 1) / scale)
        if min(x1 - x0, y1 - y0) < min_face_px:
            continue  # tiny: no use as a best frame, and its descriptor is unreliable
        shape = models.landmarks(rgb, dlib.rectangle(x0, y0, x1, y1))
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(width, x1), min(height, y1)
        kept.append(((x0, y0, x1 - x0, y1 - y0), float(det_score), shape))
    if not kept:
        return facts
    shapes = dlib.full_object_detections()
    for _, _, shape in kept:
        shapes.append(shape)
    descriptors = models.descriptor.compute_face_descriptor(rgb, shapes)
    for (box, det_score, shape), descriptor in zip(kept, descriptors, strict=True):
        x, y, w, h = box
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        quality = score_face(
            box=box,
            frame_size=(width, height),
            face_gray=gray(rgb[y : y + h, x : x + w]),
            points=points,
            detection_score=det_score,
        )
        facts.faces.append(
            Face(index, timestamp, box, det_score, quality, np.asarray(descriptor, np.float32))
        )
    return facts
