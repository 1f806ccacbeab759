"""The render handler on real media: durations, crop pans, overlays, presets, audio sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handlers.exceptions import InputError
from handlers.media.probe import probe
from handlers.protocol import HandlerResult
from handlers.render import RenderHandler
from handlers.render_edl.models import RenderParams
from tests.corpus import make_growing_mjpeg_mkv
from tests.media import make_video
from tests.render_media import (
    audio_pcm,
    bright_centre_x,
    frame_at,
    marker_video,
    png,
    render_context,
)

SMALL = {"width": 180, "height": 320}  # a 9:16 output small enough for two cores
FRAME = 1 / 30


def render(tmp_path: Path, sources: dict[str, Path], edl: dict[str, Any]) -> HandlerResult:
    params = RenderParams.model_validate({"output": SMALL, **edl})
    return RenderHandler().run(render_context(tmp_path / "job", sources, params))


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return marker_video(tmp_path_factory.mktemp("src") / "marker.mp4")


def test_duration_is_the_sum_of_segments_over_their_speeds(tmp_path: Path, marker: Path) -> None:
    silent = make_video(tmp_path / "silent.mp4", 2.5, (320, 240), fps=24, audio=False)
    result = render(
        tmp_path,
        {"a": marker, "b": silent},
        {
            "segments": [
                {"source": "a", "start": 0.5, "end": 2.0},
                {"source": "b", "start": 0.0, "end": 2.0, "speed": 2.0},
                {"source": "a", "start": 1.0, "end": 1.5, "speed": 0.25},
            ]
        },
    )
    out = probe(result.outputs[0].path)
    expected = 1.5 + 1.0 + 2.0
    assert out.duration_s == pytest.approx(expected, abs=FRAME)
    assert out.video is not None and (out.video.width, out.video.height) == (180, 320)
    assert out.video.fps == pytest.approx(30)
    assert out.has_audio, "a silent source gets silence, so the audio track goes on"
    assert len(audio_pcm(result.outputs[0].path)) / 8000 == pytest.approx(expected, abs=0.05)
    assert result.outputs[0].name == "render.mp4"
    assert [s["output_s"] for s in result.summary["segments"]] == [1.5, 1.0, 2.0]


def test_a_crossfade_overlaps_the_segments(tmp_path: Path, marker: Path) -> None:
    result = render(
        tmp_path,
        {"a": marker},
        {
            "segments": [{"start": 0, "end": 1.5}, {"start": 1.5, "end": 3.0, "speed": 1.5}],
            "crossfade_s": 0.3,
        },
    )
    assert probe(result.outputs[0].path).duration_s == pytest.approx(1.5 + 1.0 - 0.3, abs=FRAME)


def test_crop_keyframes_pan_the_window_across_the_marker(tmp_path: Path, marker: Path) -> None:
    # The 100x180 window's centre goes from x=0.4 (128 px) to 0.6 (192 px) over 2 s; the
    # box spans 150..170 px, so it moves from the window's right side to its left side.
    result = render(
        tmp_path,
        {"a": marker},
        {
            "segments": [{"start": 0.0, "end": 2.0}],
            "crop": {"keyframes": [{"t": 0, "x": 0.4}, {"t": 2, "x": 0.6}]},
        },
    )
    path = result.outputs[0].path
    first = bright_centre_x(frame_at(path, 0.0, (180, 320)))
    middle = bright_centre_x(frame_at(path, 1.0, (180, 320)))
    last = bright_centre_x(frame_at(path, 2.0 - 2 * FRAME, (180, 320)))
    assert first == pytest.approx((160 - 78) / 100, abs=0.04)
    assert middle == pytest.approx((160 - 110) / 100, abs=0.04)
    assert last == pytest.approx((160 - 142) / 100, abs=0.05)


def test_keyframes_outside_a_segment_clamp_and_a_segment_crop_wins(
    tmp_path: Path, marker: Path
) -> None:
    # Job crop: x 0.4 at t=0 -> 0.6 at t=2, cut at 1..2 (starts mid-pan, at 0.5). The second
    # segment's own static crop puts the box right of centre.
    result = render(
        tmp_path,
        {"a": marker},
        {
            "segments": [
                {"start": 1.0, "end": 2.5},
                {"start": 0.0, "end": 1.0, "crop": {"x": 0.45}},
            ],
            "crop": {"keyframes": [{"t": 0, "x": 0.4}, {"t": 2, "x": 0.6}]},
        },
    )
    path = result.outputs[0].path
    assert bright_centre_x(frame_at(path, 0.0, (180, 320))) == pytest.approx(0.5, abs=0.04)
    # Held at the last keyframe (0.6) after t=2 in the source.
    assert bright_centre_x(frame_at(path, 1.4, (180, 320))) == pytest.approx(0.18, abs=0.05)
    # x=0.45: centre 144 px, window 94..194: the box's centre (160) is at 0.66.
    assert bright_centre_x(frame_at(path, 2.0, (180, 320))) == pytest.approx(0.66, abs=0.04)


def test_an_eased_zoom_grows_the_marker(tmp_path: Path, marker: Path) -> None:
    result = render(
        tmp_path,
        {"a": marker},
        {
            "segments": [{"start": 0.0, "end": 2.0}],
            "crop": {
                "keyframes": [{"t": 0, "x": 0.5, "zoom": 1}, {"t": 2, "x": 0.5, "zoom": 2}],
                "ease": "smooth",
            },
        },
    )
    path = result.outputs[0].path

    def box_width(t: float) -> int:
        row = frame_at(path, t, (180, 320))[160]
        return int((row > 128).sum())

    start, end = box_width(0.0), box_width(2.0 - 2 * FRAME)
    assert start == pytest.approx(20 * 1.8, abs=3)  # 100 px window -> 180 px
    assert end == pytest.approx(2 * start, rel=0.12)
    # Smoothstep: a quarter of the way in time is much less than a quarter of the zoom.
    assert box_width(0.5) < start * 1.25


def test_overlays_appear_only_in_their_time_window(tmp_path: Path, marker: Path) -> None:
    logo = png(tmp_path / "logo.png", (60, 60), "red")
    result = render(
        tmp_path,
        {"a": marker, "logo": logo},
        {
            "segments": [{"start": 0, "end": 2.5}],
            "crop": {"x": 0.2},  # the white box stays out of the frame
            "overlays": [
                {
                    "type": "text",
                    "text": "GOAL",
                    "start": 1.0,
                    "end": 2.0,
                    "position": "top",
                    "size": 40,
                    "box": False,
                },
                {
                    "type": "image",
                    "source": "logo",
                    "start": 0.5,
                    "end": 1.5,
                    "position": "bottom-right",
                    "scale": 0.3,
                },
            ],
        },
    )
    path = result.outputs[0].path

    def text_on(t: float) -> bool:
        return bool((frame_at(path, t, (180, 320))[:80] > 200).sum() > 50)

    def logo_on(t: float) -> bool:
        rgb = frame_at(path, t, (180, 320), "rgb24")[250:315, 110:175].astype(int)
        return bool(((rgb[..., 0] > 150) & (rgb[..., 1] < 90)).sum() > 300)

    assert [text_on(t) for t in (0.5, 1.2, 1.8, 2.3)] == [False, True, True, False]
    assert [logo_on(t) for t in (0.2, 0.7, 1.3, 1.8)] == [False, True, True, False]


@pytest.mark.parametrize(
    ("preset", "size"),
    [("portrait-45", (1080, 1350)), ("square", (1080, 1080)), ("landscape-169", (1920, 1080))],
)
def test_presets_give_their_geometry(
    tmp_path: Path, marker: Path, preset: str, size: tuple[int, int]
) -> None:
    params = RenderParams.model_validate(
        {"segments": [{"start": 0, "end": 0.2}], "output": {"preset": preset}}
    )
    result = RenderHandler().run(render_context(tmp_path / "job", {"a": marker}, params))
    out = probe(result.outputs[0].path)
    assert out.video is not None and (out.video.width, out.video.height) == size
    assert out.video.fps == pytest.approx(30)


def test_the_default_preset_is_a_real_1080x1920_reel(tmp_path: Path, marker: Path) -> None:
    params = RenderParams.model_validate({"segments": [{"start": 0, "end": 0.3}]})
    result = RenderHandler().run(render_context(tmp_path / "job", {"a": marker}, params))
    out = probe(result.outputs[0].path)
    assert out.video is not None and (out.video.width, out.video.height) == (1080, 1920)
    assert (out.video.codec, out.audio and out.audio.codec) == ("h264", "aac")
    assert result.summary["width"] == 1080 and result.summary["height"] == 1920


def test_audio_stays_in_sync_through_a_speed_change(tmp_path: Path) -> None:
    src = marker_video(tmp_path / "sync.mp4", 3, flash_at=1.5, beep_at=1.5)
    result = render(tmp_path, {"a": src}, {"segments": [{"start": 0.5, "end": 2.5, "speed": 2}]})
    path = result.outputs[0].path
    expected = (1.5 - 0.5) / 2  # 0.5 s into the output
    flash = [t for t in np.arange(0, 0.9, FRAME) if frame_at(path, t, (180, 320)).mean() > 128]
    pcm = np.abs(audio_pcm(path))
    beep = float(np.argmax(pcm > 0.3)) / 8000
    assert flash and flash[0] == pytest.approx(expected, abs=1.5 * FRAME)
    assert beep == pytest.approx(expected, abs=1.5 * FRAME)


def test_mute_renders_no_audio_track(tmp_path: Path, marker: Path) -> None:
    result = render(
        tmp_path, {"a": marker}, {"segments": [{"start": 0, "end": 0.5}], "audio": "mute"}
    )
    assert not probe(result.outputs[0].path).has_audio


@pytest.mark.parametrize(
    ("edl", "message"),
    [
        ({"segments": [{"source": "nope", "start": 0, "end": 1}]}, "segments[0].source: no source"),
        ({"segments": [{"start": 0, "end": 1}, {"start": 2, "end": 9}]}, "segments[1].end is 9 s"),
        ({"segments": [{"start": 5, "end": 6}]}, "segments[0].start is 5 s"),
        ({"segments": []}, "segments: a render job needs at least one segment"),
    ],
)
def test_an_edl_that_does_not_fit_its_sources_is_an_input_error(
    tmp_path: Path, marker: Path, edl: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        render(tmp_path, {"a": marker}, edl)
    assert not (tmp_path / "job" / "out" / "render.mp4").exists()


def test_an_overlay_image_that_is_not_an_image_is_an_input_error(
    tmp_path: Path, marker: Path
) -> None:
    fake = tmp_path / "logo.png"
    fake.write_text("not a png")
    edl = {"segments": [{"start": 0, "end": 1}], "overlays": [{"type": "image", "source": "l"}]}
    with pytest.raises(InputError, match=r"overlays\[0\].source: not a PNG"):
        render(tmp_path, {"a": marker, "l": fake}, edl)


def test_frames_growing_past_the_cap_mid_segment_fail_the_render(tmp_path: Path) -> None:
    src = make_growing_mjpeg_mkv(tmp_path / "growing.mkv", audio=True)
    length = probe(src).duration_s
    assert length is not None
    params = RenderParams.model_validate(
        {"segments": [{"start": 0, "end": length}], "output": SMALL, "max_input_pixels": 1_000_000}
    )
    with pytest.raises(InputError, match="frame size changed to 2000x2000 mid-stream"):
        RenderHandler().run(render_context(tmp_path / "job", {"a": src}, params))
    assert not list((tmp_path / "job" / "out").iterdir())


def test_a_rotated_phone_clip_is_cropped_as_displayed(tmp_path: Path, marker: Path) -> None:
    # 320x180 coded, shown 180x320: the 9:16 window is the whole displayed frame at zoom 1.
    phone = make_video(tmp_path / "phone.mp4", 1.5, (320, 180), rotation=90)
    result = render(
        tmp_path,
        {"phone": phone, "a": marker},
        {
            "segments": [
                {"source": "phone", "start": 0, "end": 1.0},
                {"source": "a", "start": 0, "end": 0.5},
            ],
            "crop": {"keyframes": [{"t": 0, "zoom": 1}, {"t": 1, "zoom": 1.5}]},
        },
    )
    out = probe(result.outputs[0].path)
    assert out.video is not None and (out.video.width, out.video.height) == (180, 320)
    assert out.duration_s == pytest.approx(1.5, abs=FRAME)
