"""Beats: librosa's tracker on generated clicks, highlights' beats.json, render's snap_to_beats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from handlers.exceptions import InputError
from handlers.highlights import HighlightsHandler, HighlightsParams, Segment, snap_reel
from handlers.media.beats import Beats, read_beats, snap, tempo_from_times
from handlers.render import RenderHandler
from handlers.render_edl.models import RenderParams
from tests.handler_context import handler_context
from tests.media import _ffmpeg
from tests.render_media import render_context

BPM = 120  # a click every 0.5 s, from 0.25 s


def click_video(path: Path, seconds: float = 8, bpm: float = BPM) -> Path:
    """A small test picture with a click track: 30 ms 1 kHz bursts at ``bpm``, from 0.25 s."""
    period = 60 / bpm
    clicks = f"if(lt(mod(t-0.25+{period},{period}),0.03),0.8*sin(2*PI*1000*t)*exp(-100*mod(t-0.25+{period},{period})),0)"  # noqa: E501
    _ffmpeg(
        [
            *("-f", "lavfi", "-i", f"testsrc2=size=160x90:rate=25:duration={seconds}"),
            *("-f", "lavfi", "-i", f"aevalsrc='{clicks}':s=16000:d={seconds}"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
            *("-c:a", "aac", "-shortest", str(path)),
        ]
    )
    return path


@pytest.fixture(scope="module")
def clicks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return click_video(tmp_path_factory.mktemp("beats") / "clicks.mp4")


def test_highlights_writes_beats_json_with_the_clicks_tempo(clicks: Path, tmp_path: Path) -> None:
    params = HighlightsParams(min_score=1.0)  # a steady click track has no highlight
    result = HighlightsHandler().run(handler_context(tmp_path, clicks, params))
    beats = next(o for o in result.outputs if o.name == "beats.json")
    assert beats.role == "beats"
    doc = json.loads(beats.path.read_text())
    assert doc["tempo_bpm"] == pytest.approx(BPM, abs=1)
    times = np.array(doc["beats"])
    assert len(times) >= 10 and doc["beat_count"] == len(times)
    # Every beat is on a click (0.25 + k * 0.5 s), within one onset frame or two.
    offsets = (times - 0.25) % 0.5
    assert np.all(np.minimum(offsets, 0.5 - offsets) < 0.04)
    assert result.summary["tempo_bpm"] == doc["tempo_bpm"]


def test_render_snaps_segment_ends_to_the_first_sources_beats(clicks: Path, tmp_path: Path) -> None:
    params = RenderParams.model_validate(
        {
            "segments": [{"start": 1.1, "end": 2.9}, {"start": 4.4, "end": 5.6, "speed": 2}],
            "snap_to_beats": True,
            "output": {"width": 90, "height": 160},
        }
    )
    result = RenderHandler().run(render_context(tmp_path / "job", {"a": clicks}, params))
    assert result.summary["tempo_bpm"] == pytest.approx(BPM, abs=1)
    cut = [(s["start"], s["end"]) for s in result.summary["segments"]]
    assert cut[0] == pytest.approx((1.25, 2.75), abs=0.03)
    assert cut[1] == pytest.approx((4.25, 5.75), abs=0.03)
    assert result.summary["duration_s"] == pytest.approx(1.5 + 0.75, abs=1 / 30)


def test_render_snaps_to_a_beats_json_source(clicks: Path, tmp_path: Path) -> None:
    beats = tmp_path / "beats.json"
    beats.write_text(json.dumps({"tempo_bpm": 60, "beats": [0.0, 1.0, 2.0, 3.0]}))
    params = RenderParams.model_validate(
        {
            "segments": [{"source": "a", "start": 0.3, "end": 1.8}],
            "snap_to_beats": True,
            "beats": "outputs/highlights/clicks.mp4/beats.json",
            "output": {"width": 90, "height": 160},
        }
    )
    sources = {"a": clicks, "outputs/highlights/clicks.mp4/beats.json": beats}
    result = RenderHandler().run(render_context(tmp_path / "job", sources, params))
    assert [(s["start"], s["end"]) for s in result.summary["segments"]] == [(0.0, 2.0)]
    assert result.summary["tempo_bpm"] == 60


def test_a_bad_beats_json_is_an_input_error(clicks: Path, tmp_path: Path) -> None:
    beats = tmp_path / "beats.json"
    beats.write_text(json.dumps({"beats": ["soon"]}))
    params = RenderParams.model_validate(
        {"segments": [{"start": 0, "end": 1}], "snap_to_beats": True, "beats": "b"}
    )
    with pytest.raises(InputError, match="beats: every beat must be a number"):
        RenderHandler().run(render_context(tmp_path / "job", {"a": clicks, "b": beats}, params))


def test_snap_and_tempo_helpers() -> None:
    assert snap(1.2, [0.0, 1.0, 1.5]) == 1.0
    assert snap(1.3, [0.0, 1.0, 1.5]) == 1.5
    assert snap(7.0, []) == 7.0
    assert tempo_from_times([0.5, 1.0, 1.5, 2.0]) == 120
    assert tempo_from_times([1.0]) is None


def test_read_beats_accepts_any_beats_list(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"beats": [1.0, 0.5, 1.5]}))
    beats = read_beats(path)
    assert beats.times == (0.5, 1.0, 1.5) and beats.tempo_bpm == 120


def test_highlights_snaps_its_reel_to_beats_without_overlaps() -> None:
    def seg(start: float, end: float) -> Segment:
        return Segment(start, end, 0.9, 1.0, 0.5, start + 1, -10.0, 0)

    beats = Beats(120.0, tuple(0.5 * k for k in range(40)))
    reel = [seg(1.1, 5.2), seg(5.3, 9.9), seg(12.1, 12.2)]
    snapped = snap_reel(reel, beats, length=20.0)
    assert [(s.start, s.end) for s in snapped] == [(1.0, 5.0), (5.5, 10.0), (12.1, 12.2)]
    assert snap_reel(reel, Beats(None, ()), 20.0) == reel


def test_warm_up_runs_the_tracker() -> None:
    HighlightsHandler().warm_up({}, "cpu", HighlightsParams())
    RenderHandler().warm_up({}, "cpu", RenderParams())
