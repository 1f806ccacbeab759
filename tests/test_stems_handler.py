"""The stems handler on real media and the tiny models, called directly."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handlers.exceptions import HandlerConfigError, InputError
from handlers.media.probe import probe
from handlers.protocol import HandlerResult
from handlers.stems import StemsHandler, StemsParams
from tests.handler_context import handler_context
from tests.media import make_audio, make_empty, make_text_as_media, make_video
from tests.models_for_tests import make_tiny_store

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_store(tmp_path_factory.mktemp("models"))


@pytest.fixture(autouse=True)
def model_dir_env(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPGPU_MODEL_DIR", str(store))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


def run_handler(
    path: Path, tmp_path: Path, cache: dict | None = None, **params: Any
) -> HandlerResult:
    job = tmp_path / f"job-{time.monotonic_ns()}"
    return StemsHandler().run(handler_context(job, path, StemsParams(**params), cache=cache))


def decode(path: Path) -> np.ndarray:
    """Decode an output back to float32 (T, 2) with ffmpeg, for sample checks."""
    from handlers.media.audio_io import decode_to_f32

    raw = path.with_suffix(".check.f32")
    decode_to_f32(
        path, raw, stream_index=0, sample_rate=44100, channels=2, source_channels=2,
        max_duration_s=60, deadline=None,
    )  # fmt: skip
    return np.fromfile(raw, np.float32).reshape(-1, 2)


def test_mono_decodes_to_the_same_signal_on_both_sides(media: Path, tmp_path: Path) -> None:
    from handlers.media.audio_io import decode_to_f32

    src = make_audio(media / "mono-tone.wav", 0.5, channels=1)
    mono, stereo = tmp_path / "mono.f32", tmp_path / "stereo.f32"
    for dest, channels in ((mono, 1), (stereo, 2)):
        decode_to_f32(
            src, dest, stream_index=0, sample_rate=44100, channels=channels, source_channels=1,
            max_duration_s=60, deadline=None,
        )  # fmt: skip
    signal = np.fromfile(mono, np.float32)
    both = np.fromfile(stereo, np.float32).reshape(-1, 2)
    assert len(signal) == 22050 and np.abs(signal).max() > 0.1
    # As demucs upmixes: the same samples on each side, not ffmpeg's -3 dB default.
    assert np.array_equal(both[:, 0], signal) and np.array_equal(both[:, 1], signal)


def test_four_stems_flac_with_waveforms_and_metering(media: Path, tmp_path: Path) -> None:
    src = make_audio(media / "song.wav", 1.5, channels=2, source="noise")
    result = run_handler(src, tmp_path)
    stems = [o for o in result.outputs if o.role.startswith("stem:")]
    pngs = [o for o in result.outputs if o.role.startswith("waveform:")]
    assert [o.name for o in stems] == [f"{s}.flac" for s in SOURCES]
    assert [o.name for o in pngs] == [f"{s}.png" for s in SOURCES]
    assert {o.content_type for o in stems} == {"audio/flac"}
    for out in stems:
        info = probe(out.path)
        assert info.audio.sample_rate == 44100 and info.audio.channels == 2
        assert info.duration_s == pytest.approx(1.5, abs=0.05)
    for png in pngs:
        assert png.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = result.summary
    assert summary["model"] == "htdemucs" and summary["sample_rate"] == 44100
    assert summary["duration_s"] == pytest.approx(1.5, abs=0.001)
    for stem in summary["stems"]:
        assert stem["peak_dbfs"] is not None and stem["peak_dbfs"] < 20
        assert stem["loudness_lufs"] is not None and -70 < stem["loudness_lufs"] < 20
    assert result.media["has_audio"] and result.runtime["model_warm"] is False


@pytest.mark.parametrize(
    ("fmt", "extra", "codec", "rate"),
    [
        ("wav", {"bit_depth": 32}, "pcm_f32le", 44100),
        ("wav", {"bit_depth": 16}, "pcm_s16le", 44100),
        ("flac", {"bit_depth": 16}, "flac", 44100),
        ("mp3", {"bitrate": 192}, "mp3", 44100),
        ("opus", {}, "opus", 48000),
    ],
)
def test_formats_round_trip(
    media: Path, tmp_path: Path, fmt: str, extra: dict, codec: str, rate: int
) -> None:
    src = make_audio(media / "tone.flac", 1.2, channels=2)
    result = run_handler(src, tmp_path, format=fmt, stems=["vocals"], waveform=False, **extra)
    (out,) = result.outputs
    assert out.name == f"vocals.{'opus' if fmt == 'opus' else fmt}"
    info = probe(out.path)
    assert info.audio.codec == codec and info.audio.sample_rate == rate
    assert info.duration_s == pytest.approx(1.2, abs=0.05)
    assert result.summary["stems"][0]["sample_rate"] == rate


def test_karaoke_no_vocals_is_the_sum_of_the_other_sources(media: Path, tmp_path: Path) -> None:
    src = make_audio(media / "mono.mp3", 1.0, channels=1, source="noise")
    cache: dict = {}
    everything = run_handler(src, tmp_path, cache, format="wav", bit_depth=32, waveform=False)
    karaoke = run_handler(
        src, tmp_path, cache, two_stems="vocals", format="wav", bit_depth=32, waveform=False
    )
    assert [o.name for o in karaoke.outputs] == ["vocals.wav", "no_vocals.wav"]
    assert karaoke.runtime["model_warm"] is True  # the same worker cache: no reload
    warmed: dict = {}
    StemsHandler().warm_up(warmed, "cpu", StemsParams())  # what @modal.enter calls
    assert run_handler(src, tmp_path, warmed, stems=["bass"]).runtime["model_warm"] is True
    parts = {o.name: decode(o.path) for o in everything.outputs}
    no_vocals = decode(karaoke.outputs[1].path)
    expected = parts["drums.wav"] + parts["bass.wav"] + parts["other.wav"]
    assert np.abs(no_vocals - expected).max() < 1e-5
    assert np.abs(decode(karaoke.outputs[0].path) - parts["vocals.wav"]).max() == 0


def test_video_with_audio_and_bag_of_models(media: Path, tmp_path: Path) -> None:
    src = make_video(media / "clip.mp4", 1.0, size=(160, 90), channels=2)
    result = run_handler(src, tmp_path, model="tiny_bag", stems=["bass", "vocals"])
    assert [o.name for o in result.outputs] == [
        "bass.flac",
        "vocals.flac",
        "bass.png",
        "vocals.png",
    ]
    assert result.summary["model"] == "tiny_bag"


def test_silence_is_fine(media: Path, tmp_path: Path) -> None:
    src = media / "silence.wav"
    from tests.media import _ffmpeg

    _ffmpeg(["-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", "1", str(src)])
    result = run_handler(src, tmp_path)
    assert len(result.outputs) == 8
    for stem in result.summary["stems"]:
        assert stem["peak_dbfs"] is None and stem["loudness_lufs"] is None


@pytest.mark.parametrize(
    ("maker", "words"),
    [
        (lambda d: make_empty(d / "zero.wav"), "empty"),
        (lambda d: make_text_as_media(d / "notes.mp3"), "not"),
        (lambda d: make_video(d / "silent.mp4", 0.5, size=(64, 64), audio=False), "no audio"),
    ],
)
def test_bad_input_is_a_one_line_input_error(
    media: Path, tmp_path: Path, maker: Any, words: str
) -> None:
    with pytest.raises(InputError) as err:
        run_handler(maker(media), tmp_path)
    assert words in str(err.value).lower() and "\n" not in str(err.value)


def test_config_errors(media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_audio(media / "short.wav", 0.5)
    with pytest.raises(HandlerConfigError, match="not in model 'htdemucs'"):
        run_handler(src, tmp_path, stems=["piano"])
    with pytest.raises(HandlerConfigError, match="trained for"):
        run_handler(src, tmp_path, segment=5)
    monkeypatch.setenv("DROPGPU_MODEL_DIR", str(tmp_path / "no-models"))
    with pytest.raises(HandlerConfigError, match="run `dropgpu models pull htdemucs_ft`"):
        run_handler(src, tmp_path, model="htdemucs_ft")


def test_params_validate() -> None:
    assert StemsParams().model == "htdemucs"  # the built-in route validates with no params
    assert StemsParams(two_stems="vocals").two_stems == "vocals"
    for bad in (
        {"stems": ["vocals"], "two_stems": "vocals"},
        {"model": "../etc"},
        {"format": "aac"},
        {"format": "flac", "bit_depth": 32},
        {"format": "flac", "bitrate": 128},
        {"unknown": 1},
    ):
        with pytest.raises(ValueError):
            StemsParams(**bad)
