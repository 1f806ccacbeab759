"""Generate real media for tests with the bundled ffmpeg (never downloaded).

Clips are tiny (a second or two, small frames, ``ultrafast``) so a test suite on
two CPU cores stays quick. These helpers call ffmpeg directly, not through
``handlers.media.ffmpeg_run``, so a bug there cannot hide behind broken fixtures.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu.ffmpeg_binary import ffmpeg_exe

# Audio codec per container for make_video / make_audio.
_VIDEO_AUDIO_CODEC = {
    ".webm": "libopus",
    ".mkv": "aac",
    ".avi": "libmp3lame",
    ".mpg": "mp2",
    ".mpeg": "mp2",
    ".ts": "aac",
    ".flv": "aac",
}
_AUDIO_CODEC = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".mp3": "libmp3lame",
    ".m4a": "aac",
    ".ogg": "libvorbis",
    ".opus": "libopus",
}


def _ffmpeg(args: Sequence[str], *, stdout: Any = subprocess.DEVNULL) -> None:
    argv = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed making test media: {proc.stderr.decode()[-800:]}")


def make_video(
    path: Path,
    seconds: float = 2,
    size: tuple[int, int] = (640, 360),
    fps: float = 25,
    audio: bool = True,
    codec: str = "libx264",
    *,
    faststart: bool = False,
    rotation: int | None = None,
    channels: int = 1,
    extra: Sequence[str] = (),
) -> Path:
    """A ``testsrc2`` video (+ ``sine`` audio) in the container ``path``'s suffix names.

    ``rotation`` sets a display-matrix rotation (as phones write portrait video).
    """
    path = Path(path)
    if rotation is not None:
        # Rotation is container metadata: set it on a stream copy (an encode would
        # apply it to the pixels instead).
        plain = path.with_name(f".unrotated-{path.name}")
        make_video(plain, seconds, size, fps, audio, codec, channels=channels, extra=extra)
        args = ["-display_rotation:v:0", str(rotation), "-i", str(plain), "-c", "copy"]
        if faststart:
            args += ["-movflags", "+faststart"]
        _ffmpeg([*args, str(path)])
        plain.unlink()
        return path
    w, h = size
    args: list[str] = ["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={fps}:duration={seconds}"]
    if audio:
        layout = "mono" if channels == 1 else "stereo"
        args += [
            *("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"),
            *("-ac", str(channels), "-channel_layout", layout),
        ]
    args += ["-c:v", codec]
    if codec == "libx264":
        args += ["-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    elif codec in ("libvpx", "libvpx-vp9"):
        args += ["-deadline", "realtime", "-cpu-used", "8", "-b:v", "500k"]
    if audio:
        args += ["-c:a", _VIDEO_AUDIO_CODEC.get(path.suffix.lower(), "aac")]
    if faststart:
        args += ["-movflags", "+faststart"]
    _ffmpeg([*args, *extra, str(path)])
    return path


def make_hdr_video(path: Path, seconds: float = 0.5, size: tuple[int, int] = (320, 180)) -> Path:
    """10-bit HEVC tagged HLG/BT.2020, as phones record HDR video."""
    tags = "colorprim=bt2020:transfer=arib-std-b67:colormatrix=bt2020nc"
    _ffmpeg(
        [
            *("-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate=25:duration={seconds}"),
            *("-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le"),
            *("-x265-params", f"log-level=error:{tags}", "-tag:v", "hvc1", str(path)),
        ]
    )
    return Path(path)


def make_streamed_webm(path: Path, seconds: float = 1, size: tuple[int, int] = (160, 90)) -> Path:
    """A WebM written to a pipe, as browsers' MediaRecorder does: no duration in the header."""
    path = Path(path)
    src = f"testsrc2=size={size[0]}x{size[1]}:rate=25:duration={seconds}"
    with path.open("wb") as fh:
        _ffmpeg(
            [
                *("-f", "lavfi", "-i", src),
                *("-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8"),
                *("-f", "webm", "pipe:1"),
            ],
            stdout=fh,
        )
    return path


def make_audio(
    path: Path,
    seconds: float = 2,
    *,
    sample_rate: int = 44100,
    channels: int = 1,
    source: str = "sine",
    cover_art: bool = False,
) -> Path:
    """Audio from ``sine`` (or ``anoisesrc`` with ``source="noise"``); codec from the suffix.

    ``cover_art`` (mp3/m4a/flac) embeds a small picture as an attached-pic stream.
    """
    path = Path(path)
    src = (
        f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds}"
        if source == "sine"
        else f"anoisesrc=sample_rate={sample_rate}:duration={seconds}:amplitude=0.3"
    )
    args = ["-f", "lavfi", "-i", src]
    if cover_art:
        args += ["-f", "lavfi", "-i", "color=c=red:size=64x64:duration=0.04", "-map", "0:a"]
        args += ["-map", "1:v", "-c:v", "mjpeg", "-frames:v", "1", "-disposition:v", "attached_pic"]
    args += ["-ac", str(channels), "-c:a", _AUDIO_CODEC.get(path.suffix.lower(), "pcm_s16le")]
    _ffmpeg([*args, str(path)])
    return path


def make_truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of ``src``'s bytes: what an interrupted upload leaves."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def make_text_as_media(path: Path, text: str = "this is not a video\n" * 20) -> Path:
    """A text file with a media name (``notes.mp4``)."""
    Path(path).write_text(text)
    return Path(path)


def make_empty(path: Path) -> Path:
    """A zero-byte file (a failed or placeholder upload)."""
    Path(path).write_bytes(b"")
    return Path(path)


def make_ffconcat_disguise(path: Path, target_name: str) -> Path:
    """A playlist that names another local file, saved under a media name.

    ffmpeg detects the concat demuxer from the content, whatever the name says;
    dropgpu's demuxer whitelist must refuse it.
    """
    Path(path).write_text(f"ffconcat version 1.0\nfile {target_name}\n")
    return Path(path)
