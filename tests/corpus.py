"""Generators for the bad-input corpus (tests/test_bad_input_corpus.py).

Everything is tiny and quick to make with the bundled ffmpeg; files that ffmpeg
cannot be asked to write (a corrupt index, a lying header, a picture declaring
16000x16000 pixels) are real files patched in place. Deterministic: the same
call gives the same bytes.
"""

from __future__ import annotations

import random
import re
import struct
import wave
import zlib
from pathlib import Path

from tests.media import _ffmpeg


def make_random_bytes(path: Path, size: int = 64 * 1024, seed: int = 0) -> Path:
    """Noise under a media name: no container ffmpeg knows starts like this."""
    data = random.Random(seed).randbytes(size)
    Path(path).write_bytes(data)
    return Path(path)


def _find_atom(data: bytes | bytearray, name: bytes) -> tuple[int, int]:
    """(offset, size) of the first top-level MP4 box called ``name``."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == name:
            return pos, size
        if size < 8:
            break
        pos += size
    raise ValueError(f"no {name!r} box")


def make_corrupt_mp4(src: Path, dst: Path, box: str = "moov", span: int = 96) -> Path:
    """``src`` (a faststart MP4) with part of one box's payload inverted.

    ``box="moov"``: ``span`` bytes in the middle of the moov box; any other name:
    the whole payload of the first box of that name (``stco``, ``stsz``, ``stsd``...)
    after its version/flags. Box sizes stay intact, so the file still sniffs as an
    MP4; what lies inside (sample tables, codec config) is garbage.
    """
    data = bytearray(Path(src).read_bytes())
    if box == "moov":
        offset, size = _find_atom(data, b"moov")
        start = offset + size // 2 - span // 2
        end = start + span
    else:
        name_at = data.index(box.encode(), _find_atom(data, b"moov")[0])
        (size,) = struct.unpack(">I", data[name_at - 4 : name_at])
        start, end = name_at + 8, name_at - 4 + size
    for i in range(start, end):
        data[i] ^= 0xFF
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def make_lying_wav(src: Path, dst: Path, claimed_factor: int = 1000) -> Path:
    """A WAV whose RIFF and data sizes claim ``claimed_factor`` times the samples present."""
    data = bytearray(Path(src).read_bytes())
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", "not a RIFF/WAVE file"
    pos = 12
    while pos + 8 <= len(data):
        kind, size = struct.unpack("<4sI", data[pos : pos + 8])
        if kind == b"data":
            claimed = min(size * claimed_factor, 0xFFFFFFF0)
            data[pos + 4 : pos + 8] = struct.pack("<I", claimed)
            data[4:8] = struct.pack("<I", min(claimed + pos, 0xFFFFFFF0))
            Path(dst).write_bytes(bytes(data))
            return Path(dst)
        pos += 8 + size + (size & 1)
    raise ValueError("no data chunk")


def make_pcm_wav(path: Path, frames: int, *, sample_rate: int = 48000, channels: int = 1) -> Path:
    """A 16-bit PCM WAV of ``frames`` sample frames of a small ramp (0 frames: header only)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(
            b"".join(struct.pack("<h", (i * 997) % 20000) for i in range(frames * channels))
        )
    return Path(path)


def make_image(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    """One still picture (PNG, JPEG or GIF from the suffix) of a flat colour."""
    _ffmpeg(["-f", "lavfi", "-i", f"color=c=red:size={size[0]}x{size[1]}", "-frames:v", "1",
             str(path)])  # fmt: skip
    return Path(path)


def make_huge_png(path: Path, width: int = 16000, height: int = 16000) -> Path:
    """A ~100-byte PNG whose IHDR declares ``width`` x ``height`` (CRC fixed up)."""
    small = Path(path).with_name(f".small-{Path(path).name}.png")
    make_image(small)
    data = bytearray(small.read_bytes())
    small.unlink()
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    Path(path).write_bytes(bytes(data))
    return Path(path)


def make_huge_gif(path: Path, width: int = 16000, height: int = 16000) -> Path:
    """A tiny GIF whose logical screen declares ``width`` x ``height`` (ffmpeg believes it)."""
    small = Path(path).with_name(f".small-{Path(path).name}.gif")
    make_image(small)
    data = bytearray(small.read_bytes())
    small.unlink()
    assert data[:6] in (b"GIF87a", b"GIF89a")
    data[6:10] = struct.pack("<HH", width, height)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def make_huge_h264(path: Path, side: int = 8448) -> Path:
    """A real single-frame H.264 MP4 of ``side`` x ``side`` flat colour (a few hundred KB)."""
    _ffmpeg(
        [
            *("-f", "lavfi", "-i", f"color=c=blue:size={side}x{side}", "-frames:v", "1"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)),
        ]
    )
    return Path(path)


def make_sparse_long_video(path: Path, hours: int = 11, size: int = 16) -> Path:
    """An H.264 file of ``hours`` frames one hour apart: hours long, about 1.5 KB."""
    _ffmpeg(
        [
            *("-f", "lavfi", "-i", f"color=c=green:size={size}x{size}:rate=1/3600"),
            *("-frames:v", str(hours), "-c:v", "libx264", "-preset", "ultrafast"),
            *("-pix_fmt", "yuv420p", str(path)),
        ]
    )
    return Path(path)


def make_small_video(path: Path, seconds: float, size: int = 32, fps: int = 5) -> Path:
    """A silent ``testsrc2`` clip at a low frame rate: long enough, very little to encode."""
    _ffmpeg(
        [
            *("-f", "lavfi", "-i", f"testsrc2=size={size}x{size}:rate={fps}:duration={seconds}"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)),
        ]
    )
    return Path(path)


def make_surround(path: Path, seconds: float = 1, layout: str = "5.1", video: bool = False) -> Path:
    """Noise in a named channel layout (``5.1``, ``7.1``...), optionally beside a small video."""
    args = ["-f", "lavfi", "-i",
            f"anoisesrc=sample_rate=48000:duration={seconds}:amplitude=0.2"]  # fmt: skip
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size=64x36:rate=10:duration={seconds}"]
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    suffix = Path(path).suffix.lower()
    codec = {".wav": "pcm_s16le", ".flac": "flac"}.get(suffix, "aac")
    args += ["-af", f"aformat=channel_layouts={layout}", "-c:a", codec, str(path)]
    _ffmpeg(args)
    return Path(path)


def make_growing_mjpeg_mkv(
    path: Path,
    first: tuple[int, int] = (320, 240),
    later: tuple[int, int] = (2000, 2000),
    later_frames: int = 2,
    *,
    audio: bool = False,
) -> Path:
    """An MJPEG-in-Matroska stream whose first frames are ``first`` and the rest ``later``.

    The container (and so the probe) states the first frame's size; every JPEG carries
    its own. Two raw MJPEG streams joined byte for byte, then stream-copied into MKV
    (with ``audio``, beside a noise track as long as the video).
    """
    path = Path(path)
    parts = []
    for n, ((w, h), frames) in enumerate(((first, 5), (later, later_frames))):
        part = path.with_name(f".part{n}-{path.name}.mjpeg")
        _ffmpeg(["-f", "lavfi", "-i", f"color=c=red:size={w}x{h}:rate=5", "-frames:v",
                 str(frames), "-c:v", "mjpeg", "-f", "mjpeg", str(part)])  # fmt: skip
        parts.append(part)
    joined = path.with_name(f".joined-{path.name}.mjpeg")
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    sound: list[str] = []
    if audio:
        seconds = (5 + later_frames) / 5
        sound = ["-f", "lavfi", "-i", f"anoisesrc=sample_rate=8000:duration={seconds}",
                 "-c:a", "aac"]  # fmt: skip
    _ffmpeg(["-f", "mjpeg", "-framerate", "5", "-i", str(joined), *sound, "-c:v", "copy",
             str(path)])  # fmt: skip
    for p in [*parts, joined]:
        p.unlink()
    return path


def make_lying_duration_mkv(path: Path, real_s: float = 20, claimed_s: float = 1) -> Path:
    """A small video + audio MKV of ``real_s`` seconds whose header says ``claimed_s``.

    The Segment Info's Duration (EBML id 0x4489, an 8-byte float in milliseconds) and
    the per-stream DURATION tags are patched in place; the clusters keep every frame.
    """
    path = Path(path)
    plain = path.with_name(f".plain-{path.name}")
    _ffmpeg(
        [
            *("-f", "lavfi", "-i", f"testsrc2=size=32x32:rate=5:duration={real_s}"),
            *("-f", "lavfi", "-i", f"sine=sample_rate=8000:duration={real_s}"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
            *("-c:a", "aac", str(plain)),
        ]
    )
    data = bytearray(plain.read_bytes())
    plain.unlink()
    at = data.index(b"\x44\x89\x88")  # Duration, 8 bytes follow
    data[at + 3 : at + 11] = struct.pack(">d", claimed_s * 1000)
    h, rem = divmod(claimed_s, 3600)
    m, s = divmod(rem, 60)
    tag = f"{int(h):02d}:{int(m):02d}:{s:012.9f}".encode()
    patched = re.sub(rb"\d{2}:\d{2}:\d{2}\.\d{9}", tag, bytes(data))
    Path(path).write_bytes(patched)
    return path


def make_many_audio_mkv(path: Path, audio_streams: int = 990) -> Path:
    """A valid MKV with ``audio_streams`` short audio streams before its one video stream.

    Each stream is listed by ``ffmpeg -i`` with its title, comment and duration tags:
    about 6 lines a stream, so 990 of them print about 6,000 lines before the video.
    """
    path = Path(path)
    audio = path.with_name(f".audio-{path.name}.wav")
    video = path.with_name(f".video-{path.name}.mp4")
    _ffmpeg(["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "0.1", "-c:a", "pcm_s16le",
             str(audio)])  # fmt: skip
    _ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=32x32:rate=5:duration=0.4", "-c:v", "libx264",
             "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(video)])  # fmt: skip
    maps = ["-map", "0:a"] * audio_streams
    tags = ["-metadata:s:a", "title=Commentary", "-metadata:s:a", "comment=one of many"]
    _ffmpeg(["-i", str(audio), "-i", str(video), *maps, "-map", "1:v", *tags, "-c", "copy",
             str(path)])  # fmt: skip
    audio.unlink()
    video.unlink()
    return path
