"""dlib's face models, from the ``face-recognition-models`` wheel (no network, no store).

- detector: dlib's HOG + linear SVM frontal face detector (built into dlib);
- landmarks: the 68-point shape predictor (iBUG 300-W), for alignment, frontalness
  and eye openness;
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

MODEL_NAME = "dlib-20 hog + shape_predictor_68 + dlib_face_recognition_resnet_model_v1"
_PACKAGE = "face_recognition_models"
_LANDMARKS = "shape_predictor_68_face_landmarks.dat"
_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"
_CACHE_KEY = "faces.dlib_models"


@dataclass(frozen=True, slots=True)
class FaceModels:
    detector: Any  # dlib.fhog_object_detector
    landmarks: Any  # dlib.shape_predictor
    descriptor: Any  # dlib.face_recognition_model_v1


def weights_dir() -> Path:
    """The ``models/`` folder of the installed ``face-recognition-models`` package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HandlerConfigError(
            "the faces route needs the face-recognition-models package: "
            "pip install face-recognition-models==0.3.0"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    for name in (_LANDMARKS, _DESCRIPTOR):
        if not (folder / name).is_file():
            raise HandlerConfigError(f"face-recognition-models is missing {name}: reinstall it")
    return folder


def load_models(cache: dict[str, Any] | None = None) -> FaceModels:
    """The three models, loaded once per worker process (kept in ``cache``)."""
    if cache is not None and _CACHE_KEY in cache:
        return cache[_CACHE_KEY]
    try:
        import dlib
    except ImportError as exc:
        raise HandlerConfigError(
            "the faces route needs dlib: pip install dlib-bin==20.0.1.post1"
        ) from exc
    folder = weights_dir()
    models = FaceModels(
        detector=dlib.get_frontal_face_detector(),
        landmarks=dlib.shape_predictor(str(folder / _LANDMARKS)),
        descriptor=dlib.face_recognition_model_v1(str(folder / _DESCRIPTOR)),
    )
    if cache is not None:
        cache[_CACHE_KEY] = models
    return models
