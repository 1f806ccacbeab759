"""The faces route on real photographs of two real people (tests/face_media.py), with
dlib's real models from the face-recognition-models wheel. No network, no mocks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from handlers.exceptions import InputError
from handlers.faces import FacesHandler, FacesParams
from handlers.protocol import HandlerResult
from tests.face_media import Shot, make_face_still, make_face_video
from tests.handler_context import handler_context
from tests.media import make_video

# The runner's rule for output names (handlers/jobs): what every output must match.
OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
CACHE: dict[str, Any] = {}  # warm models across the tests, as a worker keeps them


def run_faces(
    tmp_path: Path, media: Path, progress: list[tuple[float, str]] | None = None, **params: Any
) -> tuple[HandlerResult, dict[str, Any], Path]:
    ctx = handler_context(tmp_path / "job", media, FacesParams(**params), progress=progress,
                          cache=CACHE)  # fmt: skip
    result = FacesHandler().run(ctx)
    doc = json.loads((ctx.output_dir / "faces.json").read_text())
    return result, doc, ctx.output_dir


@pytest.fixture(scope="module")
def two_people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Eileen Collins, then Grace Hopper, then both side by side, then Collins again.
    return make_face_video(
        tmp_path_factory.mktemp("faces") / "two people.mp4",
        [
            Shot(("astronaut",), 1.5),
            Shot(("hopper",), 1.5),
            Shot(("astronaut", "hopper"), 1.5, height=220),
            Shot(("astronaut",), 1.5, pan=-60),
        ],
    )


def test_two_people_over_four_spans_are_two_persons(two_people: Path, tmp_path: Path) -> None:
    progress: list[tuple[float, str]] = []
    result, doc, out = run_faces(tmp_path, two_people, progress)
    assert doc["version"] == 1 and doc["frames_analysed"] == 12 and doc["duration_s"] == 6.0
    assert "dlib" in doc["model"]
    persons = doc["persons"]
    assert [p["person_id"] for p in persons] == [0, 1]
    collins, hopper = persons  # ordered by screen time: Collins is on screen longer
    # Collins in spans 1, 3 and 4 (0-1.5 s, 3-6 s) is one person, not two: merged.
    assert collins["appearances"] == 9 and collins["screen_time_s"] == 4.5
    assert collins["first_s"] == 0.0 and collins["last_s"] == 5.5
    assert hopper["appearances"] == 6 and hopper["screen_time_s"] == 3.0
    assert (hopper["first_s"], hopper["last_s"]) == (1.5, 4.0)
    for p in persons:
        best = p["best"]
        assert best["image"] == f"person-{p['person_id']}.jpg"
        assert best["face"] == f"person-{p['person_id']}-face.jpg"
        assert 0 < best["score"] <= 1 and len(best["box"]) == 4
        assert p["first_s"] <= best["timestamp"] <= p["last_s"]
    # Collins' best frame is one she is in alone or with Hopper, Hopper's likewise.
    assert not 1.5 <= collins["best"]["timestamp"] < 3.0
    assert 1.5 <= hopper["best"]["timestamp"] < 4.5

    reps = doc["representative"]
    assert 1 <= len(reps) <= 10
    assert [r["image"] for r in reps] == [f"representative-{k}.jpg" for k in range(len(reps))]
    assert [r["timestamp"] for r in reps] == sorted(r["timestamp"] for r in reps)

    names = {o.name for o in result.outputs}
    assert names == {
        "person-0.jpg", "person-0-face.jpg", "person-1.jpg", "person-1-face.jpg",
        "faces.json", *(r["image"] for r in reps),
    }  # fmt: skip
    for o in result.outputs:
        assert OUTPUT_NAME.fullmatch(o.name), o.name
        assert o.path.parent == out and o.path.is_file()
        if o.content_type == "image/jpeg":
            assert o.path.read_bytes()[:3] == b"\xff\xd8\xff"
    # The face crop is smaller than the frame; the frame is the video's full size.
    assert (out / "person-0-face.jpg").stat().st_size < (out / "person-0.jpg").stat().st_size
    assert result.summary["persons"] == 2 and result.media["width"] == 640
    analyse = [f for f, phase in progress if phase == "analyse"]
    assert len(analyse) >= 2 and analyse == sorted(analyse)


def test_a_tight_threshold_splits_every_face_and_max_persons_caps(
    two_people: Path, tmp_path: Path
) -> None:
    # A threshold so tight that no two faces link splits everyone; max_persons caps.
    _, doc, _ = run_faces(tmp_path, two_people, cluster_threshold=0.01, max_persons=3)
    assert len(doc["persons"]) == 3
    assert all(p["appearances"] == 1 for p in doc["persons"])


@pytest.mark.parametrize("landmarks", [5, 68])
def test_best_frame_is_the_sharp_large_one(tmp_path: Path, landmarks: int) -> None:
    video = make_face_video(
        tmp_path / "collins.mp4",
        [
            Shot(("astronaut",), 1.0, blur=3),
            Shot(("astronaut",), 1.0, height=150),
            Shot(("astronaut",), 1.0, height=300),  # sharp and large: 2.0 s and 2.5 s
            Shot(("astronaut",), 1.0, height=300, blur=3),
        ],
    )
    _, doc, _ = run_faces(tmp_path, video, min_face_px=60, landmarks=landmarks)
    assert f"shape_predictor_{landmarks}" in doc["model"]
    assert len(doc["persons"]) == 1
    person = doc["persons"][0]
    assert person["appearances"] == 8  # blurred and small faces are found, and are her
    assert person["best"]["timestamp"] in (2.0, 2.5)
    assert person["best"]["terms"]["sharpness"] > 0.5 and person["best"]["terms"]["size"] == 1.0


def test_a_video_without_faces_succeeds_with_no_persons(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "pattern.mp4", seconds=1, size=(320, 180), audio=False)
    result, doc, _ = run_faces(tmp_path, clip)
    assert doc["persons"] == [] and doc["frames_analysed"] == 2
    assert len(doc["representative"]) == 2
    assert {o.role for o in result.outputs} == {"representative", "faces-index"}


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_still_photo_is_one_frame(tmp_path: Path, suffix: str) -> None:
    still = make_face_still(tmp_path / f"hopper{suffix}")
    result, doc, out = run_faces(tmp_path, still)
    assert doc["frames_analysed"] == 1 and doc["duration_s"] == 0.0
    [person] = doc["persons"]
    assert person["appearances"] == 1 and person["best"]["timestamp"] == 0.0
    assert (out / "person-0.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert result.media["kind"] == "image"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("clip.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40),
        ("photo.jpg", b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 50),
        ("photo.png", b"hello, this is text"),
    ],
)
def test_corrupt_input_fails_with_one_line(tmp_path: Path, name: str, data: bytes) -> None:
    bad = tmp_path / name
    bad.write_bytes(data)
    with pytest.raises(InputError) as caught:
        run_faces(tmp_path, bad)
    message = str(caught.value)
    assert message and "\n" not in message and "Traceback" not in message
    assert not any((tmp_path / "job" / "out").iterdir())


def test_a_still_over_the_pixel_cap_is_refused(tmp_path: Path) -> None:
    still = make_face_still(tmp_path / "hopper.png")
    with pytest.raises(InputError, match=r"^the image is over the limit of 100,000 pixels"):
        run_faces(tmp_path, still, max_input_pixels=100_000)


def test_frame_stream_reads_lazily_and_stops_ffmpeg_when_closed(
    two_people: Path, tmp_path: Path
) -> None:
    import time

    import ffmpeg

    from handlers.faces_pipeline.stream import FrameStream
    from handlers.media.ffmpeg_run import file_url, media_input

    fifo = tmp_path / "frames.ppm"
    args = ffmpeg.output(
        media_input(two_people).video, file_url(fifo), f="image2pipe", vcodec="ppm",
        pix_fmt="rgb24",
    ).get_args()  # fmt: skip
    started = time.monotonic()
    with FrameStream(args, fifo, deadline=started + 60, caps=None) as stream:
        first = next(iter(stream))  # 60 frames at 10 fps: only the first is read
        assert first.shape == (360, 640, 3)
    assert not fifo.exists()
    assert not stream._thread.is_alive()  # ffmpeg was stopped, not waited out to its end
