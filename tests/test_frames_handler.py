"""The frames handler called directly: real ffmpeg, real JPEGs, a real contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from handlers.exceptions import InputError
from handlers.frames import FramesHandler, FramesParams, sheet_indices
from handlers.protocol import Handler, HandlerContext, HandlerParams
from tests.handler_context import handler_context
from tests.media import make_audio, make_empty, make_video
from tests.test_proxy_handler import decode_image, ffmpeg


def ctx_for(tmp_path: Path, src: Path, params: HandlerParams | None = None) -> HandlerContext:
    return handler_context(tmp_path, src, params or FramesParams())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("frames-media")
    # Brightness steps every second, so each frame's time can be read off its pixels.
    ffmpeg(
        *("-f", "lavfi", "-i", "color=c=black:s=320x180:r=25:d=3"),
        *("-vf", "format=yuv420p,geq=lum='16+floor(T)*80':cb=128:cr=128"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(d / "steps.mp4")),
    )  # fmt: skip
    make_video(d / "clip.mkv", seconds=2, size=(640, 360), audio=False)
    make_audio(d / "voice.mp4", seconds=1)  # audio in an .mp4: a user mistake
    return d


def test_implements_protocol() -> None:
    handler = FramesHandler()
    assert isinstance(handler, Handler) and handler.name == "frames"
    assert FramesParams().fps == 1.0 and FramesParams().max_frames == 600


def test_frames_index_and_contact_sheet(media: Path, tmp_path: Path) -> None:
    params = FramesParams(fps=2, sheet_columns=3, sheet_tile_width=160)
    result = FramesHandler().run(ctx_for(tmp_path, media / "steps.mp4", params))
    frames = [o for o in result.outputs if o.role == "frame"]
    assert [f.name for f in frames] == [f"frame-{i:06d}.jpg" for i in range(1, 7)]
    assert all(f.content_type == "image/jpeg" for f in result.outputs if f.name.endswith(".jpg"))

    doc = json.loads((tmp_path / "out" / "frames.json").read_text())
    assert doc["count"] == 6 and doc["fps"] == 2.0 and not doc["capped"]
    assert [f["time_s"] for f in doc["frames"]] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [f["name"] for f in doc["frames"]] == [f.name for f in frames]
    # The picture at each timestamp is the one on screen then (brightness = second).
    for entry in doc["frames"]:
        luma = decode_image(tmp_path / "out" / entry["name"], (320, 180)).mean()
        # JPEGs are full range: video level 16 + 80 n is (80 n) * 255 / 219.
        assert luma == pytest.approx(int(entry["time_s"]) * 80 * 255 / 219, abs=10), entry

    sheet = doc["contact_sheet"]
    assert (sheet["columns"], sheet["rows"], sheet["tile_width"]) == (3, 2, 160)
    assert sheet["frames"] == list(range(6))
    # 3x2 tiles of 160x90 with 4 px padding and margin.
    img = decode_image(tmp_path / "out" / "contact-sheet.jpg", (3 * 160 + 2 * 4 + 2 * 4,
                                                                2 * 90 + 4 + 2 * 4))  # fmt: skip
    first, last = img[10:50, 20:150], img[100:140, 350:480]  # above the time labels
    assert first.mean() < 40 < 150 < last.mean()
    assert result.summary["count"] == 6 and result.summary["contact_sheet"]["rows"] == 2


def test_caps_on_count_and_size(media: Path, tmp_path: Path) -> None:
    params = FramesParams(fps=10, max_frames=4, max_size=160)
    result = FramesHandler().run(ctx_for(tmp_path, media / "clip.mkv", params))
    frames = [o for o in result.outputs if o.role == "frame"]
    assert len(frames) == 4 and result.summary["capped"] is True
    assert (result.summary["width"], result.summary["height"]) == (160, 90)
    decode_image(frames[0].path, (160, 90))


@pytest.mark.parametrize("name", ["voice.mp4", "empty.mp4"])
def test_no_video_is_an_input_error(media: Path, tmp_path: Path, name: str) -> None:
    src = media / name if name != "empty.mp4" else make_empty(tmp_path / name)
    ctx = ctx_for(tmp_path, src)
    with pytest.raises(InputError) as err:
        FramesHandler().run(ctx)
    assert "\n" not in str(err.value)
    if name == "voice.mp4":
        assert str(err.value).startswith("no video stream: the frames route")
    assert not list(ctx.output_dir.iterdir())


def test_sheet_indices_are_even_and_bounded() -> None:
    assert sheet_indices(5, 48) == [0, 1, 2, 3, 4]
    picked = sheet_indices(600, 48)
    assert len(picked) == 48 and picked[0] == 0 and picked[-1] < 600
    assert np.diff(picked).min() >= 12


@pytest.mark.parametrize("bad", [{"fps": 0}, {"max_frames": 0}, {"max_size": 8}, {"z": 1}])
def test_params_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FramesParams(**bad)
