"""Faces into persons: Chinese whispers on the 128-d descriptors (no preset count).

Two faces are linked when their descriptors are closer than ``threshold`` (dlib's
descriptor is trained so that 0.6 separates people; 0.5 is the tighter value dlib's
own clustering example uses). A person seen in separate parts of a video is one
cluster because identity, not time, links the faces.
"""

from __future__ import annotations

from dataclasses import dataclass

from handlers.faces_pipeline.analyse import Face


@dataclass(frozen=True, slots=True)
class Person:
    faces: list[Face]  # in time order
    best: Face
    appearances: int  # analysed frames the person is in
    first_s: float
    last_s: float
    screen_time_s: float


def cluster_faces(faces: list[Face], threshold: float) -> list[list[Face]]:
    """Groups of faces of one identity each (deterministic: dlib seeds its own RNG)."""
    if not faces:
        return []
    import dlib

    vectors = [dlib.vector(face.descriptor.astype(float).tolist()) for face in faces]
    labels = dlib.chinese_whispers_clustering(vectors, threshold)
    groups: dict[int, list[Face]] = {}
    for face, label in zip(faces, labels, strict=True):
        groups.setdefault(int(label), []).append(face)
    return list(groups.values())


def make_persons(
    groups: list[list[Face]], *, seconds_per_frame: float, max_persons: int
) -> list[Person]:
    """Persons ordered by screen time (then best score, then first appearance), capped."""
    persons = []
    for group in groups:
        group = sorted(group, key=lambda f: (f.frame, f.box))
        frames = sorted({f.frame for f in group})
        persons.append(
            Person(
                faces=group,
                # Highest score; ties go to the earliest frame.
                best=max(group, key=lambda f: (f.quality.score, -f.frame)),
                appearances=len(frames),
                first_s=group[0].timestamp,
                last_s=group[-1].timestamp,
                screen_time_s=round(len(frames) * seconds_per_frame, 3),
            )
        )
    persons.sort(key=lambda p: (-p.screen_time_s, -p.appearances, -p.best.quality.score, p.first_s))
    return persons[:max_persons]
