"""The proxy handler called directly, as the job runner would: real ffmpeg, real files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from gpu.ffmpeg_binary import ffmpeg_exe
from handlers.exceptions import InputError
from handlers.media.probe import probe
from handlers.media.waveform import PcmFormat, compute_peaks, draw_waveform
from handlers.protocol import Handler, HandlerContext, HandlerParams
from handlers.proxy import ProxyHandler, ProxyParams
from tests.handler_context import handler_context
from tests.media import make_audio, make_empty, make_text_as_media, make_truncated, make_video


def ffmpeg(*args: str) -> None:
    argv = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def decode_image(path: Path, size: tuple[int, int], pix_fmt: str = "gray") -> np.ndarray:
    """A picture as a numpy array (height, width[, 3]), decoded by ffmpeg at ``size``."""
    out = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    shape = (size[1], size[0]) + ((3,) if pix_fmt == "rgb24" else ())
    data = np.frombuffer(out, dtype=np.uint8)
    assert data.size == int(np.prod(shape)), f"{path.name} is not {size[0]}x{size[1]}"
    return data.reshape(shape)


def ctx_for(tmp_path: Path, src: Path, params: HandlerParams | None = None) -> HandlerContext:
    return handler_context(tmp_path, src, params or ProxyParams())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("proxy-media")
    # One black second (a fade-in, a slate), then picture; quiet, then a loud tone.
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=s=640x360:r=25:d=3"),
        *("-f", "lavfi", "-i", "sine=f=440:r=48000:d=3"),
        *("-filter_complex", "[0:v]drawbox=c=black:t=fill:enable='lt(t,1)'[v];"
          "[1:a]volume='if(lt(t,1.5),0.02,0.9)':eval=frame[a]"),
        *("-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast"),
        *("-pix_fmt", "yuv420p", "-c:a", "aac", str(d / "clip.mp4")),
    )  # fmt: skip
    make_video(d / "portrait.mp4", seconds=1, size=(180, 320), audio=False)
    make_audio(d / "song.flac", seconds=2)
    return d


def test_implements_protocol() -> None:
    handler = ProxyHandler()
    assert isinstance(handler, Handler)
    assert handler.name == "proxy"
    assert {".mp4", ".mov", ".wav", ".mp3", ".flac"} <= handler.extensions
    ProxyParams()  # defaults are valid with no params (built-in route)


def test_video_gives_proxy_poster_and_waveform(media: Path, tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path, media / "clip.mp4", ProxyParams(short_side=180))
    result = ProxyHandler().run(ctx)
    names = {o.name: o for o in result.outputs}
    assert set(names) == {"proxy.mp4", "poster.jpg", "waveform.json", "waveform.png"}
    assert names["proxy.mp4"].role == "proxy" and names["poster.jpg"].content_type == "image/jpeg"

    proxy = probe(names["proxy.mp4"].path)
    assert proxy.video is not None and proxy.audio is not None
    assert (proxy.video.width, proxy.video.height) == (320, 180)  # 16:9 kept, short side 180
    assert proxy.video.codec == "h264" and proxy.audio.codec == "aac"
    assert proxy.duration_s == pytest.approx(3.0, abs=0.15)
    assert result.runtime["video_encoder"] == "libx264"
    assert result.media["width"] == 640 and result.media["duration_s"] == pytest.approx(3, abs=0.1)

    # The poster is a picture from the content, not the black first second.
    poster = decode_image(names["poster.jpg"].path, (320, 180))
    assert poster.shape == (180, 320) and poster.mean() > 60

    doc = json.loads(names["waveform.json"].path.read_text())
    assert doc["version"] == 2 and doc["channels"] == 1 and doc["bits"] == 8
    fmt = PcmFormat.for_points_per_second(50)
    assert (doc["sample_rate"], doc["samples_per_pixel"]) == (fmt.sample_rate, 320)
    assert doc["length"] == pytest.approx(150, abs=3) and len(doc["data"]) == 2 * doc["length"]
    pairs = np.array(doc["data"]).reshape(-1, 2)
    assert (pairs[:, 0] <= pairs[:, 1]).all() and np.abs(pairs).max() <= 127
    quiet, loud = pairs[5:70], pairs[80:145]  # 0.1-1.4 s and 1.6-2.9 s
    # sine is at 1/8 full scale: 0.9 * 127 / 8 = 14
    assert np.abs(quiet).max() <= 1 and loud[:, 1].min() >= 12

    png = decode_image(names["waveform.png"].path, (1800, 280), "rgb24")
    assert png.shape == (280, 1800, 3)
    wave = (png == np.array([79, 195, 247], dtype=np.uint8)).all(axis=2)
    heights = wave.sum(axis=0)
    assert heights[100:800].mean() < 5 < 25 < heights[1000:1700].mean()


def test_portrait_is_not_upscaled_and_silent_video_has_no_waveform(
    media: Path, tmp_path: Path
) -> None:
    result = ProxyHandler().run(ctx_for(tmp_path, media / "portrait.mp4"))
    assert [o.name for o in result.outputs] == ["proxy.mp4", "poster.jpg"]
    video = probe(result.outputs[0].path).video
    assert video is not None and (video.width, video.height) == (180, 320)
    assert "waveform" not in result.summary


def test_audio_only_gives_waveform_only(media: Path, tmp_path: Path) -> None:
    result = ProxyHandler().run(ctx_for(tmp_path, media / "song.flac"))
    assert [o.name for o in result.outputs] == ["waveform.json", "waveform.png"]
    assert result.summary["waveform"]["decoded_audio_s"] == pytest.approx(2.0, abs=0.05)
    assert result.runtime == {}


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_broken_inputs_are_one_line_input_errors(media: Path, tmp_path: Path, kind: str) -> None:
    src = tmp_path / "clip.mp4"
    if kind == "empty":
        make_empty(src)
    elif kind == "text":
        make_text_as_media(src)
    else:
        make_truncated(media / "clip.mp4", src, 0.5)
    ctx = ctx_for(tmp_path, src)
    with pytest.raises(InputError) as err:
        ProxyHandler().run(ctx)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert not list(ctx.output_dir.iterdir())


def test_caps(media: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="max_duration_s"):
        ProxyHandler().run(ctx_for(tmp_path, media / "clip.mp4", ProxyParams(max_duration_s=1)))
    with pytest.raises(InputError, match="max_duration_s"):
        ProxyHandler().run(ctx_for(tmp_path, media / "song.flac", ProxyParams(max_duration_s=1)))
    with pytest.raises(InputError, match="max_input_pixels"):
        params = ProxyParams(max_input_pixels=100 * 100)
        ProxyHandler().run(ctx_for(tmp_path, media / "clip.mp4", params))


@pytest.mark.parametrize(
    "bad", [{"short_side": 721}, {"short_side": 100}, {"waveform": {"bits": 12}}, {"x": 1}]
)
def test_params_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ProxyParams(**bad)


def test_peaks_and_drawing_units() -> None:
    pcm = np.concatenate([np.zeros(320), np.full(320, 0.5), np.array([-1.0, 1.0])])
    peaks = compute_peaks(pcm.astype(np.float32), 320)
    assert peaks.tolist() == [[0, 0], [0.5, 0.5], [-1, 1]]  # the last point is partial
    img = draw_waveform(peaks, 30, 11)
    assert img.shape == (11, 30, 3)
    assert (img[:, 25] == [79, 195, 247]).all()  # full-scale column is fully drawn
