"""The best-frame score of one detected face, from 0 (useless) to 1 (ideal).

A weighted sum of terms each in [0, 1] (weights in :data:`WEIGHTS`), times an
edge factor:

- ``size``: the face's side over a third of the frame's short side (a face that
  fills a third of the frame height or more scores 1);
- ``sharpness``: variance of the Laplacian of the face, resampled to 96x96 grey so
  faces of any size compare, mapped by v / (v + 150);
- ``frontal``: how centred the nose is between the eyes (from the landmarks):
  1 looking at the camera, 0 in profile;
- ``eyes`` (68-point landmarks only; with 5 points its weight is left out and the
  others are rescaled to sum to 1): eye aspect ratio (Soukupová & Čech 2016), 1 when
  both eyes are open (EAR >= 0.25), 0 when closed (EAR <= 0.12);
- ``confidence``: the HOG detector's SVM score, clipped into [0, 1] over [0, 2];
- edge factor: 0.6 when the face box touches the frame edge (cut off), else 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WEIGHTS = {"size": 0.3, "sharpness": 0.3, "frontal": 0.15, "eyes": 0.1, "confidence": 0.15}
EDGE_FACTOR = 0.6
SHARPNESS_SIDE = 96
_SHARP_HALF = 150.0
_EAR_OPEN, _EAR_CLOSED = 0.25, 0.12


@dataclass(frozen=True, slots=True)
class Quality:
    score: float
    terms: dict[str, float]


def gray(rgb: np.ndarray) -> np.ndarray:
    """Luma (BT.601 weights, integer maths) of an RGB uint8 image."""
    r, g, b = (rgb[..., i].astype(np.uint16) for i in range(3))
    return ((r * 77 + g * 150 + b * 29) >> 8).astype(np.uint8)


def sharpness(face_gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of ``face_gray`` resampled to a fixed size."""
    rows = np.linspace(0, face_gray.shape[0] - 1, SHARPNESS_SIDE).round().astype(int)
    cols = np.linspace(0, face_gray.shape[1] - 1, SHARPNESS_SIDE).round().astype(int)
    img = face_gray[np.ix_(rows, cols)].astype(np.float32)
    lap = img[1:-1, :-2] + img[1:-1, 2:] + img[:-2, 1:-1] + img[2:, 1:-1] - 4 * img[1:-1, 1:-1]
    return float(lap.var())


def _eyes_and_nose(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(points) == 5:  # dlib's 5 points: two corners of each eye, then under the nose
        return points[0:2].mean(axis=0), points[2:4].mean(axis=0), points[4]
    return points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[30]


def frontalness(points: np.ndarray) -> float:
    """1 - |nose offset from the eyes' midpoint| / half the eye distance (5 or 68 points)."""
    left, right, nose = _eyes_and_nose(points)
    half = np.linalg.norm(right - left) / 2
    if half < 1e-6:
        return 0.0
    axis = (right - left) / (2 * half)
    offset = float(np.dot(nose - (left + right) / 2, axis))
    return float(np.clip(1 - abs(offset) / half, 0, 1))


def eye_aspect_ratio(eye: np.ndarray) -> float:
    vertical = np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])
    horizontal = np.linalg.norm(eye[0] - eye[3])
    return float(vertical / (2 * horizontal)) if horizontal > 1e-6 else 0.0


def eyes_open(points: np.ndarray) -> float:
    ear = (eye_aspect_ratio(points[36:42]) + eye_aspect_ratio(points[42:48])) / 2
    return float(np.clip((ear - _EAR_CLOSED) / (_EAR_OPEN - _EAR_CLOSED), 0, 1))


def score_face(
    *,
    box: tuple[int, int, int, int],
    frame_size: tuple[int, int],
    face_gray: np.ndarray,
    points: np.ndarray,
    detection_score: float,
) -> Quality:
    """The documented score for one face: ``box`` is (x, y, w, h) in frame pixels."""
    x, y, w, h = box
    width, height = frame_size
    terms = {
        "size": float(min(1.0, max(w, h) / (min(width, height) / 3))),
        "sharpness": (v := sharpness(face_gray)) / (v + _SHARP_HALF),
        "frontal": frontalness(points),
        "confidence": float(np.clip(detection_score / 2, 0, 1)),
    }
    if len(points) == 68:
        terms["eyes"] = eyes_open(points)
    total = sum(WEIGHTS[k] * terms[k] for k in terms) / sum(WEIGHTS[k] for k in terms)
    cut_off = x <= 0 or y <= 0 or x + w >= width or y + h >= height
    if cut_off:
        total *= EDGE_FACTOR
    return Quality(round(total, 4), {k: round(v, 4) for k, v in terms.items()})
