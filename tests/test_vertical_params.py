"""The vertical route's optional params: focus crop, trim, speed, text, watermark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from handlers.exceptions import HandlerConfigError, InputError
from handlers.media.encode import FONT_NAME, font_file
from handlers.media.probe import probe
from handlers.protocol import HandlerContext
from handlers.vertical import VerticalHandler, VerticalParams, atempo_chain
from tests.handler_context import handler_context
from tests.test_proxy_handler import decode_image, ffmpeg

SIZE = (90, 160)  # small 9:16 output keeps encodes quick


def ctx_for(tmp_path: Path, src: Path, params: VerticalParams) -> HandlerContext:
    return handler_context(tmp_path, src, params)


def params(**kw: object) -> VerticalParams:
    return VerticalParams(width=SIZE[0], height=SIZE[1], fps=25, **kw)  # type: ignore[arg-type]


def first_frame(tmp_path: Path, video: Path, at: float = 0.0) -> np.ndarray:
    png = tmp_path / f"frame-{at}.png"
    ffmpeg("-ss", f"{at}", "-i", str(video), "-frames:v", "1", "-update", "1", str(png))
    return decode_image(png, SIZE, "rgb24").astype(int)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("vertical-params")
    # Left half red, right half blue; a 440 Hz tone. 4 s.
    ffmpeg(
        *("-f", "lavfi", "-i", "color=c=red:s=160x90:r=25:d=4"),
        *("-f", "lavfi", "-i", "color=c=blue:s=160x90:r=25:d=4"),
        *("-f", "lavfi", "-i", "sine=d=4"),
        *("-filter_complex", "[0:v]crop=80:90:0:0[l];[1:v]crop=80:90:0:0[r];[l][r]hstack[v]"),
        *("-map", "[v]", "-map", "2:a", "-c:v", "libx264", "-preset", "ultrafast"),
        *("-pix_fmt", "yuv420p", "-c:a", "aac", str(d / "halves.mp4")),
    )  # fmt: skip
    ffmpeg(
        *("-f", "lavfi", "-i", "color=c=0x00ff00:s=40x20", "-frames:v", "1", str(d / "logo.png"))
    )
    return d


def is_red(px: np.ndarray) -> bool:
    return bool(px[0] > 180 and px[2] < 80)


def is_blue(px: np.ndarray) -> bool:
    return bool(px[2] > 180 and px[0] < 80)


def test_focus_point_picks_the_side(media: Path, tmp_path: Path) -> None:
    frames = {}
    for name, p in {
        "left": params(crop="focus", focus_x=0.0),
        "right": params(crop="focus", focus_x=1.0),
        "center": params(),
    }.items():
        result = VerticalHandler().run(ctx_for(tmp_path / name, media / "halves.mp4", p))
        frames[name] = first_frame(tmp_path, result.outputs[0].path)
    assert is_red(frames["left"][80, 45]) and is_blue(frames["right"][80, 45])
    centre = frames["center"][80]
    assert is_red(centre[10]) and is_blue(centre[80])  # the seam is in the middle


def test_trim_and_speed(media: Path, tmp_path: Path) -> None:
    p = params(trim_start_s=1, trim_end_s=3.5, speed=2)
    result = VerticalHandler().run(ctx_for(tmp_path, media / "halves.mp4", p))
    info = probe(result.outputs[0].path)
    assert info.duration_s == pytest.approx(1.25, abs=0.1)  # (3.5 - 1) / 2
    assert info.audio is not None and info.video is not None and round(info.video.fps) == 25


def test_text_overlay_uses_the_shipped_font(media: Path, tmp_path: Path) -> None:
    font = font_file(tmp_path)
    assert font.name == FONT_NAME and font.is_file() and "handlers" in font.parts
    assert (font.parent / "DejaVuSans-LICENSE.txt").is_file()
    plain = VerticalHandler().run(ctx_for(tmp_path / "a", media / "halves.mp4", params()))
    text = VerticalHandler().run(
        ctx_for(tmp_path / "b", media / "halves.mp4", params(text="GOAL 1:0 'ü' 100%"))
    )
    a, b = (
        first_frame(tmp_path / "a", plain.outputs[0].path),
        first_frame(tmp_path / "b", text.outputs[0].path),
    )
    diff = np.abs(a - b).sum(axis=2) > 60
    rows = np.nonzero(diff.any(axis=1))[0]
    assert diff.sum() > 50 and rows.min() > SIZE[1] // 2  # drawn, at the bottom


def test_watermark_in_the_corner(media: Path, tmp_path: Path) -> None:
    p = params(crop="focus", focus_x=1.0, watermark=str(media / "logo.png"),
               watermark_position="top-right", watermark_width=0.4)  # fmt: skip
    result = VerticalHandler().run(ctx_for(tmp_path, media / "halves.mp4", p))
    frame = first_frame(tmp_path, result.outputs[0].path)
    top_right, bottom_left = frame[8, SIZE[0] - 12], frame[SIZE[1] - 8, 8]
    assert top_right[1] > 180 and top_right[0] < 80  # green logo
    assert is_blue(bottom_left)


def test_bad_values(media: Path, tmp_path: Path) -> None:
    with pytest.raises(HandlerConfigError, match="watermark image not found"):
        p = params(watermark=str(tmp_path / "missing.png"))
        VerticalHandler().run(ctx_for(tmp_path, media / "halves.mp4", p))
    with pytest.raises(InputError, match="trim_start_s"):
        VerticalHandler().run(ctx_for(tmp_path, media / "halves.mp4", params(trim_start_s=10)))
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "bad",
    [{"crop": "face"}, {"focus_x": 1.5}, {"trim_end_s": 1, "trim_start_s": 2}, {"speed": 10},
     {"watermark": "/logo.gif"}, {"text": ""}, {"text_color": "red;x"}, {"text": "x" * 201}],
)  # fmt: skip
def test_params_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        VerticalParams(**bad)  # type: ignore[arg-type]


def test_atempo_chain_covers_slow_speeds() -> None:
    import ffmpeg as ffmpeg_python

    src = ffmpeg_python.input("file:/x.wav").audio
    args = ffmpeg_python.output(atempo_chain(src, 0.25), "file:/y.wav").get_args()
    graph = args[args.index("-filter_complex") + 1]
    assert graph.count("atempo=0.5") == 2


def test_quality_zero_is_lossless_not_a_refused_encoder(media: Path, tmp_path: Path) -> None:
    # libx264 refuses CRF 0 (lossless) with the "high" profile; every documented
    # quality (0..51) must encode.
    result = VerticalHandler().run(ctx_for(tmp_path, media / "halves.mp4", params(quality=0)))
    info = probe(result.outputs[0].path)
    assert info.video is not None and info.video.profile == "High 4:4:4 Predictive"
    assert info.video.pix_fmt == "yuv420p"


def test_huge_caps_and_trim_are_plain_numbers_for_ffmpeg(media: Path, tmp_path: Path) -> None:
    # 1000000 was written "1e+06", which ffmpeg refuses as a duration: every job failed.
    p = params(max_duration_s=1_000_000, trim_start_s=0.5, trim_end_s=1_000_000)
    result = VerticalHandler().run(ctx_for(tmp_path, media / "halves.mp4", p))
    assert probe(result.outputs[0].path).duration_s == pytest.approx(3.5, abs=0.1)


@pytest.mark.parametrize(
    "bad",
    [{"max_duration_s": 1e9}, {"max_duration_s": float("inf")}, {"max_duration_s": float("nan")},
     {"trim_start_s": -1}, {"trim_start_s": 1e12}, {"trim_end_s": 1e12},
     {"max_input_pixels": 2**31}, {"quality": 52}, {"quality": -1}],
)  # fmt: skip
def test_out_of_range_values_are_refused_at_config_load(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        VerticalParams(**bad)  # type: ignore[arg-type]
