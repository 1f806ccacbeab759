"""handlers.media.probe: media facts from `ffmpeg -i` without ffprobe."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.exceptions import InputError, MediaToolError
from handlers.media.probe import channels_of, parse_probe_output, probe, split_top_level
from tests.media import (
    make_audio,
    make_empty,
    make_ffconcat_disguise,
    make_streamed_webm,
    make_text_as_media,
    make_truncated,
    make_video,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("probe-media")
    make_video(d / "av.mp4", seconds=2, size=(640, 360), fps=25)
    make_video(d / "silent.mkv", seconds=1, size=(320, 240), fps=30, audio=False)
    make_video(d / "rotated.mp4", seconds=0.5, size=(320, 180), audio=False, rotation=90)
    make_audio(d / "tone.wav", seconds=1)
    make_audio(d / "song.mp3", seconds=1, channels=2, cover_art=True)
    return d


def test_video_with_audio(media: Path) -> None:
    info = probe(media / "av.mp4")
    assert info.format.startswith("mov,mp4")
    assert info.duration_s == pytest.approx(2.0, abs=0.1)
    assert info.duration_source == "container"
    assert info.has_video and info.has_audio
    v, a = info.video, info.audio
    assert v is not None and a is not None
    assert (v.width, v.height, v.fps, v.codec, v.pix_fmt) == (640, 360, 25.0, "h264", "yuv420p")
    assert v.square_pixels and not v.interlaced and v.rotation == 0
    assert (a.codec, a.sample_rate, a.channels, a.channel_layout) == ("aac", 48000, 1, "mono")
    facts = info.as_manifest_dict()
    for key in ("duration_s", "width", "height", "fps", "video_codec", "audio_codec",
                "sample_rate", "channels", "format"):  # fmt: skip
        assert key in facts
    assert facts["width"] == 640 and facts["audio_codec"] == "aac"
    assert info.size_bytes == (media / "av.mp4").stat().st_size
    import json

    json.dumps(facts)  # JSON-ready


def test_video_without_audio(media: Path) -> None:
    info = probe(media / "silent.mkv")
    assert info.format.startswith("matroska")
    assert info.has_video and not info.has_audio
    assert info.as_manifest_dict()["audio_codec"] is None
    assert info.video is not None and info.video.fps == 30.0


def test_rotation_swaps_display_size(media: Path) -> None:
    info = probe(media / "rotated.mp4")
    v = info.video
    assert v is not None and abs(v.rotation) == 90
    assert (v.width, v.height) == (320, 180)
    assert (v.display_width, v.display_height) == (180, 320)
    assert info.as_manifest_dict()["width"] == 180


def test_audio_only(media: Path) -> None:
    info = probe(media / "tone.wav")
    assert not info.has_video and info.has_audio
    assert info.audio is not None and info.audio.codec == "pcm_s16le"
    assert info.duration_s == pytest.approx(1.0, abs=0.05)


def test_cover_art_is_not_video(media: Path) -> None:
    info = probe(media / "song.mp3")
    assert info.cover_art
    assert not info.has_video and info.has_audio
    assert info.audio is not None and info.audio.channels == 2


def test_duration_from_packets_when_header_has_none(tmp_path: Path) -> None:
    info = probe(make_streamed_webm(tmp_path / "recording.webm", seconds=1))
    assert info.duration_source == "packets"
    assert info.duration_s == pytest.approx(1.0, abs=0.15)


def test_raw_elementary_stream_duration_by_decoding(tmp_path: Path) -> None:
    src = make_video(tmp_path / "raw.h264", seconds=1, size=(64, 64), audio=False)
    info = probe(src)
    assert info.format == "h264" and info.duration_source == "packets"
    assert info.duration_s == pytest.approx(1.0, abs=0.15)


def _one_line_input_error(path: Path) -> str:
    with pytest.raises(InputError) as err:
        probe(path)
    msg = str(err.value)
    assert msg.startswith("not a media file ffmpeg can read: ")
    assert "\n" not in msg and len(msg) < 400
    assert str(path.parent) not in msg
    return msg


def test_zero_byte_file(tmp_path: Path) -> None:
    assert "empty (0 bytes)" in _one_line_input_error(make_empty(tmp_path / "clip.mp4"))


def test_text_named_mp4(tmp_path: Path) -> None:
    msg = _one_line_input_error(make_text_as_media(tmp_path / "clip.mp4"))
    assert "not a recognised media format" in msg


def test_text_named_mkv(tmp_path: Path) -> None:
    _one_line_input_error(make_text_as_media(tmp_path / "clip.mkv"))


def test_truncated_mp4(media: Path, tmp_path: Path) -> None:
    msg = _one_line_input_error(make_truncated(media / "av.mp4", tmp_path / "cut.mp4"))
    assert "truncated" in msg and "moov atom not found" in msg


def test_playlist_disguised_as_media(media: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.mp4").write_bytes((media / "av.mp4").read_bytes())
    msg = _one_line_input_error(make_ffconcat_disguise(tmp_path / "clip.mp4", "secret.mp4"))
    assert "not accepted" in msg


def test_missing_file_is_not_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(MediaToolError):
        probe(tmp_path / "gone.mp4")


SAMPLE = """\
[mov,mp4,m4a,3gp,3g2,mj2 @ 0x1] stream 0, timescale not set
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:/s/in.mov':
  Metadata:
    title           : At least one output file is a title, not an error
  Duration: 01:02:03.50, start: 0.023000, bitrate: 12000 kb/s
  Stream #0:0(eng): Video: hevc (Main 10) (hvc1 / 0x31637668), yuv420p10le(tv, bt2020nc/bt2020/arib-std-b67), 3840x2160, 11000 kb/s, 59.94 fps, 59.94 tbr, 600 tbn (default)
    Metadata:
      handler_name    : Core Media Video
    Side data:
      displaymatrix: rotation of -90.00 degrees
  Stream #0:1(eng): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, 5.1(side), fltp, 256 kb/s (default)
  Stream #0:2: Video: mpeg2video (Main), yuv420p(tv, top first), 720x576 [SAR 64:45 DAR 16:9], 25 fps, 25 tbr, 90k tbn
  Stream #0:3(und): Data: none (mebx / 0x7862656D), 0 kb/s
  Stream #0:4: Video: png, rgb24(pc), 600x600, 90k tbr, 90k tbn (attached pic)
At least one output file must be specified
"""  # noqa: E501


def test_parse_probe_output_sample() -> None:
    info = parse_probe_output(SAMPLE.splitlines(), 123)
    assert info is not None
    assert info.duration_s == pytest.approx(3723.5)
    assert info.bit_rate == 12_000_000 and info.start_s == pytest.approx(0.023)
    assert len(info.video_streams) == 2 and info.cover_art
    assert info.other_streams == ("Data",)
    v = info.video
    assert v is not None
    assert (v.codec, v.profile, v.width, v.height) == ("hevc", "Main 10", 3840, 2160)
    assert v.fps == pytest.approx(59.94) and v.bit_rate == 11_000_000
    assert v.pix_fmt == "yuv420p10le" and v.hdr and v.color_transfer == "arib-std-b67"
    assert v.rotation == -90 and (v.display_width, v.display_height) == (2160, 3840)
    mpeg2 = info.video_streams[1]
    assert mpeg2.interlaced and mpeg2.sar == (64, 45) and not mpeg2.square_pixels
    a = info.audio
    assert a is not None
    assert (a.sample_rate, a.channels, a.channel_layout) == (48000, 6, "5.1(side)")
    assert a.bit_rate == 256_000


def test_parse_probe_output_without_input_block() -> None:
    assert parse_probe_output(["Error opening input files: Invalid data"]) is None


@pytest.mark.parametrize(
    ("layout", "n"),
    [("mono", 1), ("stereo", 2), ("5.1(side)", 6), ("7.1", 8), ("3 channels", 3), ("weird", None)],
)
def test_channels_of(layout: str, n: int | None) -> None:
    assert channels_of(layout) == n


def test_split_top_level() -> None:
    assert split_top_level("h264 (High), yuv420p(tv, bt709), 1x2 [SAR 1:1 DAR 1:2]") == [
        "h264 (High)",
        "yuv420p(tv, bt709)",
        "1x2 [SAR 1:1 DAR 1:2]",
    ]


def test_video_after_990_audio_streams_is_found(tmp_path: Path) -> None:
    # ffmpeg lists each stream with its tags: ~6,000 lines before the video stream,
    # past the 5,000 lines the probe used to read.
    from tests.corpus import make_many_audio_mkv

    src = make_many_audio_mkv(tmp_path / "commentary.mkv", audio_streams=990)
    info = probe(src)
    assert len(info.audio_streams) == 990
    assert info.video is not None and info.video.index == 990
    assert (info.video.width, info.video.height) == (32, 32)
