"""The highlights handler: scoring, peak picking and the reel, on generated "matches"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from handlers.exceptions import InputError
from handlers.highlights import (
    HighlightsHandler,
    HighlightsParams,
    Scores,
    choose_reel,
    pick_segments,
)
from handlers.media.probe import probe
from handlers.protocol import Handler, HandlerContext, HandlerParams
from tests.handler_context import handler_context
from tests.media import make_audio, make_video
from tests.test_proxy_handler import ffmpeg


def ctx_for(tmp_path: Path, src: Path, params: HandlerParams | None = None) -> HandlerContext:
    return handler_context(tmp_path, src, params or HighlightsParams())


def make_match(path: Path, seconds: int = 10, burst: tuple[int, int] = (6, 8)) -> Path:
    """A still shot with quiet crowd noise; in ``burst`` the picture moves and the crowd roars."""
    a, b = burst
    ffmpeg(
        "-filter_complex",
        f"color=c=0x406040:s=160x90:r=25:d={seconds}[bg];testsrc2=s=160x90:r=25:d={seconds}[m];"
        f"[bg][m]overlay=enable='between(t,{a},{b})'[v];"
        f"anoisesrc=a=0.02:d={seconds}:r=48000:seed=7,"
        f"volume='if(between(t,{a},{b}),30,1)':eval=frame[a]",
        *("-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast"),
        *("-pix_fmt", "yuv420p", "-c:a", "aac", str(path)),
    )
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("highlights-media")
    make_match(d / "match.mp4")
    make_video(d / "silent.mp4", seconds=1, size=(160, 90), audio=False)
    make_audio(d / "radio.mp4", seconds=1)
    # Nothing happens: a still picture and a steady tone.
    ffmpeg(
        *("-f", "lavfi", "-i", "color=c=gray:s=160x90:r=25:d=3", "-f", "lavfi", "-i", "sine=d=3"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"),
        str(d / "still.mp4"),
    )
    return d


def test_implements_protocol() -> None:
    handler = HighlightsHandler()
    assert isinstance(handler, Handler) and handler.name == "highlights"
    assert HighlightsParams().target_length_s == 45


def test_burst_becomes_the_highlight_and_is_deterministic(media: Path, tmp_path: Path) -> None:
    params = HighlightsParams(target_length_s=6)
    docs = []
    for run in ("a", "b"):
        result = HighlightsHandler().run(ctx_for(tmp_path / run, media / "match.mp4", params))
        names = [o.name for o in result.outputs]
        assert names == ["highlights.json", "beats.json", "highlights.mp4"]
        docs.append((tmp_path / run / "out" / "highlights.json").read_bytes())
    assert docs[0] == docs[1]  # same input, same analysis, byte for byte

    doc = json.loads(docs[0])
    assert doc["duration_s"] == pytest.approx(10, abs=0.1)
    assert len(doc["per_second"]["score"]) == 10
    best = max(doc["segments"], key=lambda s: s["score"])
    assert set(best) >= {"start", "end", "score", "audio_peak", "motion"}
    # The burst (6-8 s) is inside the best segment, with run-up before it.
    assert best["start"] <= 5 and best["end"] >= 8 and best["end"] - best["start"] <= 15
    assert best["audio_peak"] == 1.0 and best["motion"] > 0.2 and best["in_reel"]
    # Quiet, still seconds score low.
    assert max(doc["per_second"]["score"][:4]) < 0.1

    reel = doc["reel"]
    assert reel["length_s"] <= 6 and reel["segments"] == [[best["start"], best["end"]]]
    info = probe(tmp_path / "a" / "out" / "highlights.mp4")
    assert info.video is not None and info.audio is not None
    assert (info.video.width, info.video.height) == (160, 90)
    assert info.duration_s == pytest.approx(reel["length_s"], abs=0.2)
    assert result.runtime["video_encoder"] == "libx264"
    assert result.summary["segment_count"] == len(doc["segments"])


def test_nothing_stands_out_gives_an_index_without_reel(media: Path, tmp_path: Path) -> None:
    result = HighlightsHandler().run(ctx_for(tmp_path, media / "still.mp4"))
    assert [o.name for o in result.outputs] == ["highlights.json", "beats.json"]
    doc = json.loads(result.outputs[0].path.read_text())
    assert doc["segments"] == [] and doc["reel"] is None


@pytest.mark.parametrize(
    ("name", "message"),
    [("silent.mp4", "^no audio stream: the highlights route"),
     ("radio.mp4", "^no video stream: the highlights route")],
)  # fmt: skip
def test_missing_streams_are_input_errors(
    media: Path, tmp_path: Path, name: str, message: str
) -> None:
    ctx = ctx_for(tmp_path, media / name)
    with pytest.raises(InputError, match=message):
        HighlightsHandler().run(ctx)
    assert not list(ctx.output_dir.iterdir())


def _scores(score: list[float]) -> Scores:
    s = np.array(score)
    return Scores(audio=s, audio_db=s * 60 - 60, motion=s, cuts=np.zeros(len(s), int), score=s)


def test_peak_picking_and_reel_choice() -> None:
    # Two peaks: a strong one at 20 s and a weaker one at 5 s, in a 30 s clip.
    score = [0.05] * 30
    score[4:7] = [0.5, 0.6, 0.5]
    score[19:22] = [0.8, 1.0, 0.8]
    params = HighlightsParams(min_segment_s=4, max_segment_s=10, lead_s=2, target_length_s=7)
    segments = pick_segments(_scores(score), 30.0, params)
    assert [(s.start, s.end, s.score) for s in segments] == [(2.0, 7.0, 0.6), (17.0, 22.0, 1.0)]
    # Only the best fits in 7 s; the reel is in time order.
    assert [s.start for s in choose_reel(segments, params)] == [17.0]
    both = choose_reel(segments, params.model_copy(update={"target_length_s": 10}))
    assert [s.start for s in both] == [2.0, 17.0]
    # Everything longer than the target: the best is trimmed to fit.
    short = choose_reel(segments, params.model_copy(update={"target_length_s": 3}))
    assert len(short) == 1 and short[0].end - short[0].start == pytest.approx(3)


@pytest.mark.parametrize(
    "bad",
    [{"min_segment_s": 20, "max_segment_s": 10}, {"audio_weight": 0, "motion_weight": 0},
     {"target_length_s": 0}, {"short_side": 721}],
)  # fmt: skip
def test_params_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        HighlightsParams(**bad)
