"""The faces route's pure parts: quality terms, clustering and persons, representatives."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from handlers.faces import FacesParams
from handlers.faces_pipeline.analyse import DETECTOR_MIN_PX, Face, FrameFacts, detect_scale
from handlers.faces_pipeline.cluster import cluster_faces, make_persons
from handlers.faces_pipeline.outputs import face_crop, pick_representatives
from handlers.faces_pipeline.quality import (
    Quality,
    eyes_open,
    frontalness,
    score_face,
    sharpness,
)


def _landmarks(nose_dx: float = 0.0, eye_open: float = 6.0) -> np.ndarray:
    points = np.zeros((68, 2))
    for first, cx in ((36, 40.0), (42, 80.0)):  # six points per eye, around (cx, 50)
        points[first : first + 6] = [
            (cx - 10, 50), (cx - 4, 50 - eye_open), (cx + 4, 50 - eye_open),
            (cx + 10, 50), (cx + 4, 50 + eye_open), (cx - 4, 50 + eye_open),
        ]  # fmt: skip
    points[30] = (60 + nose_dx, 70)
    return points


def test_sharpness_falls_with_blur_and_ignores_size() -> None:
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    blurred = ((sharp[:-1, :-1].astype(int) + sharp[1:, 1:]) // 2).astype(np.uint8)
    assert sharpness(blurred) < sharpness(sharp)
    big = np.kron(sharp, np.ones((3, 3), np.uint8))  # the same picture, 3x the pixels
    assert sharpness(big) == pytest.approx(
        sharpness(np.kron(sharp, np.ones((2, 2), np.uint8))), rel=0.5
    )


def test_frontal_and_eyes_terms_from_landmarks() -> None:
    assert frontalness(_landmarks()) == pytest.approx(1.0)
    assert frontalness(_landmarks(nose_dx=10)) == pytest.approx(0.5)
    assert frontalness(_landmarks(nose_dx=40)) == 0.0
    assert eyes_open(_landmarks(eye_open=6)) == 1.0
    assert eyes_open(_landmarks(eye_open=0.5)) == 0.0
    # dlib's 5 points: two corners of each eye, then under the nose.
    five = np.array([(50, 50), (30, 50), (70, 50), (90, 50), (60, 70)], dtype=float)
    assert frontalness(five) == pytest.approx(1.0)
    five[4, 0] = 80
    assert frontalness(five) == pytest.approx(0.0)


def test_a_face_cut_off_by_the_edge_scores_lower() -> None:
    face = np.random.default_rng(1).integers(0, 255, (100, 100), dtype=np.uint8)
    common = {"frame_size": (640, 360), "face_gray": face, "points": _landmarks(),
              "detection_score": 1.5}  # fmt: skip
    inside = score_face(box=(100, 100, 100, 100), **common)
    cut = score_face(box=(0, 100, 100, 100), **common)
    assert 0 < cut.score < inside.score <= 1
    assert set(inside.terms) == {"size", "sharpness", "frontal", "eyes", "confidence"}
    five = score_face(
        box=(100, 100, 100, 100), **{**common, "points": _landmarks()[[36, 39, 42, 45, 30]]}
    )
    assert "eyes" not in five.terms and 0 < five.score <= 1


def _face(frame: int, descriptor: np.ndarray, score: float = 0.5) -> Face:
    return Face(frame, frame / 2, (0, 0, 10, 10), 1.0, Quality(score, {}), descriptor)


def test_clusters_by_identity_ordered_by_screen_time() -> None:
    a, b = np.zeros(128, np.float32), np.zeros(128, np.float32)
    b[0] = 1.0  # 1.0 apart: two people at any threshold below that
    faces = [_face(i, a + 0.01 * i, score=0.1 * i) for i in range(3)]
    faces += [_face(i, b) for i in range(3, 8)]
    faces.append(_face(9, a, score=0.1))  # the first person again, later: the same person
    groups = cluster_faces(faces, 0.5)
    persons = make_persons(groups, seconds_per_frame=0.5, max_persons=10)
    assert [p.appearances for p in persons] == [5, 4]
    first = persons[1]
    assert (first.first_s, first.last_s, first.screen_time_s) == (0.0, 4.5, 2.0)
    assert first.best.frame == 2  # the highest score
    assert len(make_persons(groups, seconds_per_frame=0.5, max_persons=1)) == 1
    assert cluster_faces([], 0.5) == []


def test_representatives_spread_over_the_timeline() -> None:
    frames = [FrameFacts(i, i / 2, sharpness=float(i % 5)) for i in range(40)]
    chosen = pick_representatives(frames, 10)
    assert len(chosen) == 10 and chosen == sorted(chosen)
    assert all(4 * k <= i < 4 * (k + 1) for k, i in enumerate(chosen))
    assert pick_representatives(frames[:3], 10) == [0, 1, 2]


def test_detection_scale_and_crop() -> None:
    assert detect_scale(1920, 1080, DETECTOR_MIN_PX) == 1.0
    assert detect_scale(1920, 1080, 2 * DETECTOR_MIN_PX) == 0.5
    assert detect_scale(3840, 2160, DETECTOR_MIN_PX) == 0.5  # 4K is scanned at 1080p
    frame = np.zeros((100, 200, 3), np.uint8)
    assert face_crop(frame, (0, 0, 50, 50)).shape == (70, 70, 3)


def test_params_are_bounded_and_closed() -> None:
    assert FacesParams().fps == 2.0
    with pytest.raises(ValidationError):
        FacesParams(fps=0)
    with pytest.raises(ValidationError):
        FacesParams(persons=3)
