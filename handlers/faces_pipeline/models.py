"""dlib's face models, from the ``face-recognition-models`` wheel (no network, no store).

- detector: dlib's HOG + linear SVM frontal face detector (built into dlib);
- landmarks: the 5-point shape predictor (default; trained on dlib's own CC0 data set)
  or the 68-point one (iBUG 300-W, whose licence excludes commercial use; adds the
  eyes-open term), for alignment and frontalness;
- descriptor: dlib's ResNet face descriptor (128-d, 99.38% on LFW), whose euclidean
  distance is below ~0.6 for two photos of the same person.

The weight files are found with ``importlib.util.find_spec`` instead of importing
``face_recognition_models``: its ``__init__`` imports ``pkg_resources``, which recent
setuptools no longer ships.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.exceptions import HandlerConfigError

_PACKAGE = "face_recognition_models"
_LANDMARKS = {
    5: "shape_predictor_5_face_landmarks.dat",
    68: "shape_predictor_68_face_landmarks.dat",
}
_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"
_CACHE_KEY = "faces.dlib_models"


def model_name(points: int) -> str:
    """What faces.json names as its model."""
    return f"dlib hog + shape_predictor_{points} + dlib_face_recognition_resnet_model_v1"


@dataclass(frozen=True, slots=True)
class FaceModels:
    detector: Any  # dlib.fhog_object_detector
    landmarks: Any  # dlib.shape_predictor
    descriptor: Any  # dlib.face_recognition_model_v1
    points: int  # 5 or 68 landmarks


def weights_dir(points: int = 5) -> Path:
    """The ``models/`` folder of the installed ``face-recognition-models`` package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HandlerConfigError(
            "the faces route needs the face-recognition-models package: "
            "pip install face-recognition-models==0.3.0"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    for name in (_LANDMARKS[points], _DESCRIPTOR):
        if not (folder / name).is_file():
            raise HandlerConfigError(f"face-recognition-models is missing {name}: reinstall it")
    return folder


def load_models(cache: dict[str, Any] | None = None, points: int = 5, slot: int = 0) -> FaceModels:
    """The three models, loaded once per worker process (kept in ``cache``); ``slot``
    numbers the copies that analysis threads use side by side."""
    key = f"{_CACHE_KEY}.{points}.{slot}"
    if cache is not None and key in cache:
        return cache[key]
    try:
        import dlib
    except ImportError as exc:
        raise HandlerConfigError(
            "the faces route needs dlib: pip install dlib-bin==20.0.1.post1"
        ) from exc
    folder = weights_dir(points)
    models = FaceModels(
        detector=dlib.get_frontal_face_detector(),
        landmarks=dlib.shape_predictor(str(folder / _LANDMARKS[points])),
        descriptor=dlib.face_recognition_model_v1(str(folder / _DESCRIPTOR)),
        points=points,
    )
    if cache is not None:
        cache[key] = models
    return models
