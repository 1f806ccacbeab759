"""The vertical handler called directly, as the job runner would: real ffmpeg, real files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

import gpu.encoders as encoders
from gpu.encoders import LIBX264, NVENC, VideoEncoderChoice, choose_video_encoder, encoder_args
from handlers.exceptions import InputError, TransientError
from handlers.media.probe import probe
from handlers.protocol import Handler, HandlerContext, HandlerParams
from handlers.vertical import VerticalHandler, VerticalParams, build_args
from tests.handler_context import handler_context
from tests.media import (
    make_audio,
    make_empty,
    make_hdr_video,
    make_text_as_media,
    make_truncated,
    make_video,
)

# NVENC/NVDEC exist only where an NVIDIA driver does; the CPU expectations below
# are for machines without one (the test suite's normal home).
HAS_NVIDIA = Path("/dev/nvidiactl").exists()


@pytest.fixture(autouse=True)
def _fresh_encoder_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DROPGPU_VIDEO_ENCODER", raising=False)
    monkeypatch.delenv("DROPGPU_HWACCEL", raising=False)
    encoders.clear_cache()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("vertical-media")
    make_video(d / "landscape.mp4", seconds=2, size=(640, 360), fps=25)
    make_video(d / "silent.mov", seconds=1, size=(320, 180), fps=25, audio=False)
    make_video(d / "portrait.mp4", seconds=1, size=(360, 640), fps=60, channels=2)
    make_video(d / "faststart.mp4", seconds=2, size=(320, 180), faststart=True)
    make_audio(d / "song.mp3", seconds=1, cover_art=True)
    return d


def _ctx(
    tmp_path: Path,
    src: Path,
    params: HandlerParams | None = None,
    *,
    deadline_s: float = 120,
    progress: list[tuple[float, str]] | None = None,
) -> HandlerContext:
    return handler_context(
        tmp_path, src, params or VerticalParams(), deadline_s=deadline_s, progress=progress
    )


def test_implements_protocol() -> None:
    handler = VerticalHandler()
    assert isinstance(handler, Handler)
    assert handler.name == "vertical" and handler.version == "1.1.0"
    assert {".mp4", ".mov", ".mkv", ".webm", ".mts", ".3gp"} <= handler.extensions
    assert all(ext == ext.lower() and ext.startswith(".") for ext in handler.extensions)


def test_landscape_to_1080x1920(media: Path, tmp_path: Path) -> None:
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    result = VerticalHandler().run(_ctx(tmp_path, media / "landscape.mp4", progress=seen))
    elapsed = time.monotonic() - started

    [out] = result.outputs
    assert (out.name, out.role, out.content_type) == ("vertical.mp4", "video", "video/mp4")
    assert out.path == tmp_path / "out" / "vertical.mp4" and out.path.stat().st_size > 0
    info = probe(out.path)
    v, a = info.video, info.audio
    assert v is not None and a is not None
    assert (v.width, v.height, v.fps, v.codec, v.pix_fmt) == (1080, 1920, 30.0, "h264", "yuv420p")
    assert v.square_pixels
    assert (a.codec, a.sample_rate, a.channels) == ("aac", 48000, 2)
    assert info.duration_s == pytest.approx(2.0, abs=0.1)
    # faststart: the index (moov) precedes the media data (mdat).
    head = out.path.read_bytes()[:65536]
    assert 0 <= head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head

    assert result.media["width"] == 640 and result.media["height"] == 360
    assert result.media["duration_s"] == pytest.approx(2.0, abs=0.1)
    assert result.runtime["video_encoder"] == LIBX264 and result.runtime["ffmpeg"]
    assert "hwaccel" in result.runtime
    assert result.summary["width"] == 1080 and result.summary["height"] == 1920
    assert result.summary["fps"] == 30.0 and result.summary["has_audio"] is True
    assert result.summary["duration_s"] == pytest.approx(2.0, abs=0.1)

    assert seen[0] == (0.0, "probe")
    encode = [f for f, phase in seen if phase == "encode"]
    assert encode and encode[-1] == 1.0 and encode == sorted(encode)
    print(f"2 s 640x360 -> 1080x1920 with libx264: {elapsed:.2f} s")


def test_no_audio_in_no_audio_out(media: Path, tmp_path: Path) -> None:
    result = VerticalHandler().run(_ctx(tmp_path, media / "silent.mov"))
    info = probe(result.outputs[0].path)
    assert info.has_video and not info.has_audio
    assert result.summary["has_audio"] is False


def test_portrait_input_and_custom_size(media: Path, tmp_path: Path) -> None:
    params = VerticalParams(width=360, height=640, fps=24, quality=28)
    result = VerticalHandler().run(_ctx(tmp_path, media / "portrait.mp4", params))
    info = probe(result.outputs[0].path)
    assert info.video is not None
    assert (info.video.width, info.video.height, info.video.fps) == (360, 640, 24.0)
    assert info.audio is not None and info.audio.channels == 2


def test_hdr_is_tone_mapped_to_sdr(tmp_path: Path) -> None:
    src = make_hdr_video(tmp_path / "iphone.mov")
    source = probe(src).video
    assert source is not None and source.hdr and source.color_transfer == "arib-std-b67"
    params = VerticalParams(width=180, height=320)
    result = VerticalHandler().run(_ctx(tmp_path, src, params))
    out = probe(result.outputs[0].path).video
    assert out is not None and (out.width, out.height) == (180, 320)
    assert result.media["hdr"] is True and result.runtime["hdr_tonemap"] is True
    assert out.pix_fmt == "yuv420p" and out.color_transfer == "bt709" and not out.hdr


def test_audio_only_is_input_error(media: Path, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, media / "song.mp3")
    with pytest.raises(InputError, match=r"^no video stream: .*audio only"):
        VerticalHandler().run(ctx)
    assert not list(ctx.output_dir.iterdir())


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "truncated_faststart"])
def test_broken_inputs_are_one_line_input_errors(media: Path, tmp_path: Path, kind: str) -> None:
    src = tmp_path / "clip.mp4"
    if kind == "empty":
        make_empty(src)
    elif kind == "text":
        make_text_as_media(src)
    elif kind == "truncated":  # index at the end: the cut removes it
        make_truncated(media / "landscape.mp4", src)
    else:  # index first: ffmpeg decodes what is there, then runs out
        make_truncated(media / "faststart.mp4", src, fraction=0.4)
    ctx = _ctx(tmp_path, src)
    with pytest.raises(InputError) as err:
        VerticalHandler().run(ctx)
    msg = str(err.value)
    assert msg and "\n" not in msg and len(msg) < 400
    if kind.startswith("truncated"):
        assert "truncated" in msg
    assert not list(ctx.output_dir.iterdir())  # no partial output left behind


def test_caps_reject_long_and_huge_inputs(media: Path, tmp_path: Path) -> None:
    src = media / "landscape.mp4"
    with pytest.raises(InputError, match="max_duration_s"):
        VerticalHandler().run(_ctx(tmp_path, src, VerticalParams(max_duration_s=1)))
    with pytest.raises(InputError, match="max_input_pixels"):
        VerticalHandler().run(
            _ctx(tmp_path, media / "landscape.mp4", VerticalParams(max_input_pixels=640 * 359))
        )


def test_deadline_passed_is_transient(media: Path, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, media / "landscape.mp4", deadline_s=-1)
    with pytest.raises(TransientError, match="deadline"):
        VerticalHandler().run(ctx)


def test_deadline_during_encode_kills_ffmpeg(media: Path, tmp_path: Path) -> None:
    params = VerticalParams(width=4096, height=4096)  # slow enough to outlive the deadline
    ctx = _ctx(tmp_path, media / "landscape.mp4", params, deadline_s=0.6)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"timed out|deadline"):
        VerticalHandler().run(ctx)
    assert time.monotonic() - started < 5
    assert not list(ctx.output_dir.iterdir())


@pytest.mark.parametrize(
    "bad",
    [{"width": 1081}, {"height": 8}, {"fps": 0}, {"crop": "face"}, {"audio_bitrate": "lots"},
     {"colour": "red"}],
)  # fmt: skip
def test_params_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        VerticalParams(**bad)


def test_argv_is_hardened(media: Path, tmp_path: Path) -> None:
    src = media / "landscape.mp4"
    info = probe(src)
    assert info.video is not None
    args = build_args(src, tmp_path / "o.mp4", info, info.video, VerticalParams(),
                      choose_video_encoder("cpu"))  # fmt: skip
    i = args.index("-i")
    assert args[i + 1] == f"file:{src}"
    assert "-protocol_whitelist" in args[:i] and "-format_whitelist" in args[:i]
    assert args[-1] == f"file:{tmp_path}/o.mp4"
    graph = args[args.index("-filter_complex") + 1]
    assert "force_original_aspect_ratio=increase" in graph and "crop=1080:1920" in graph
    assert args[args.index("-movflags") + 1] == "+faststart"
    from handlers.media.ffmpeg_run import harden_args

    assert "-nostdin" in harden_args(args)


@pytest.mark.skipif(HAS_NVIDIA, reason="expects a machine without NVIDIA hardware")
def test_encoder_choice_here_is_libx264_with_reason() -> None:
    cpu = choose_video_encoder("cpu")
    assert cpu.codec == LIBX264 and cpu.hwaccel is None and "cpu" in cpu.reason
    assert cpu.args == encoder_args(LIBX264)
    assert "-crf" in cpu.args and "yuv420p" in cpu.args
    gpu = choose_video_encoder("cuda:0")  # no driver: the probes fail, quickly
    assert gpu.codec == LIBX264 and gpu.hwaccel is None
    assert "h264_nvenc probe failed" in gpu.reason
    assert gpu.probes["h264_nvenc"] != "ok" and gpu.probes["cuda_decode"] != "ok"
    assert choose_video_encoder("cuda:0") is gpu  # cached per process


@pytest.mark.skipif(HAS_NVIDIA, reason="expects a machine without NVIDIA hardware")
def test_forced_nvenc_falls_back_to_libx264(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPGPU_VIDEO_ENCODER", "h264_nvenc")
    choice = choose_video_encoder("cpu")
    assert choice.codec == LIBX264
    assert "forced" in choice.reason and "falling back to libx264" in choice.reason


def test_forced_libx264(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPGPU_VIDEO_ENCODER", "libx264")
    monkeypatch.setenv("DROPGPU_HWACCEL", "none")
    choice = choose_video_encoder("cuda:0")
    assert choice.codec == LIBX264 and choice.hwaccel is None
    assert "forced by DROPGPU_VIDEO_ENCODER=libx264" in choice.reason


@pytest.mark.skipif(HAS_NVIDIA, reason="NVENC would work there, so nothing would fail")
def test_failing_hardware_path_falls_back_to_cpu(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = VideoEncoderChoice(NVENC, "cuda", encoder_args(NVENC, None, 0), "pretend", 0)
    monkeypatch.setattr("handlers.media.encode.choose_video_encoder", lambda device: broken)
    result = VerticalHandler().run(_ctx(tmp_path, media / "silent.mov"))
    assert result.runtime["video_encoder"] == LIBX264 and result.runtime["hwaccel"] is None
    assert result.runtime["hw_error"]
    assert probe(result.outputs[0].path).video is not None
