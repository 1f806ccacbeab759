"""Media facts without ffprobe: parse what ``ffmpeg -i <file>`` prints.

The bundled static ffmpeg (imageio-ffmpeg) ships no ffprobe, so the probe runs
``ffmpeg -i file:<path>`` with no output. ffmpeg then prints the input's
container, duration and streams and exits 1 with "At least one output file must
be specified": that exit is the expected one. A file ffmpeg cannot open prints
an error instead, which becomes an :class:`InputError`.

The text format has been stable for many years; the parser is deliberately
lenient (unknown fields are skipped, not fatal) and tested against ffmpeg's own
output for generated files.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog

from handlers.exceptions import HandlerConfigError, InputError, MediaToolError
from handlers.media.ffmpeg_run import (
    FfmpegTimeoutError,
    classify_failure,
    input_args,
    media_input,
    run_ffmpeg,
)

log = structlog.get_logger(__name__)

_INPUT_RE = re.compile(r"^Input #0, (?P<format>.+?), from '")
_DURATION_RE = re.compile(r"^\s*Duration: (?P<value>N/A|\d+:\d{2}:\d{2}(?:\.\d+)?)")
_START_RE = re.compile(r"start: (-?\d+(?:\.\d+)?)")
_BITRATE_RE = re.compile(r"bitrate: (\d+) kb/s")
_STREAM_RE = re.compile(r"^\s*Stream #0:(?P<index>\d+)\S*: (?P<kind>\w+): (?P<rest>.*)$")
_DIMS_RE = re.compile(r"^(\d+)x(\d+)\b")
_SAR_RE = re.compile(r"SAR (\d+):(\d+)")
_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)(k?) (fps|tbr)\b")
_KBPS_RE = re.compile(r"(\d+) kb/s")
_HZ_RE = re.compile(r"^(\d+) Hz$")
_ROTATION_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)
_TIME_RE = re.compile(r"\btime=(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")

_NAMED_LAYOUTS = {
    "mono": 1,
    "stereo": 2,
    "downmix": 2,
    "quad": 4,
    "hexagonal": 6,
    "octagonal": 8,
    "hexadecagonal": 16,
}
_HDR_TRANSFERS = frozenset({"smpte2084", "arib-std-b67"})
# ffmpeg opens at most 1,000 streams (its max_streams); listed with their tags that is
# well under a megabyte. All of it is parsed: a cut-off list would hide streams.
PROBE_HEAD_CHARS = 16 << 20


@dataclass(frozen=True, slots=True)
class VideoStream:
    index: int
    codec: str
    width: int
    height: int
    fps: float | None = None
    pix_fmt: str | None = None
    profile: str | None = None
    rotation: float = 0.0  # display-matrix rotation in degrees, as ffmpeg prints it
    sar: tuple[int, int] | None = None  # sample (pixel) aspect ratio
    interlaced: bool = False
    color_transfer: str | None = None
    bit_rate: int | None = None

    @property
    def quarter_turn(self) -> bool:
        """ffmpeg auto-rotates on decode: a 90°/270° rotation swaps width and height."""
        return round(abs(self.rotation)) % 180 == 90

    @property
    def display_width(self) -> int:
        return self.height if self.quarter_turn else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.quarter_turn else self.height

    @property
    def square_pixels(self) -> bool:
        return self.sar is None or self.sar[0] == self.sar[1] or 0 in self.sar

    @property
    def hdr(self) -> bool:
        return self.color_transfer in _HDR_TRANSFERS


@dataclass(frozen=True, slots=True)
class AudioStream:
    index: int
    codec: str
    sample_rate: int | None = None
    channels: int | None = None
    channel_layout: str | None = None
    bit_rate: int | None = None


@dataclass(frozen=True, slots=True)
class MediaInfo:
    format: str  # ffmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    duration_s: float | None
    size_bytes: int
    bit_rate: int | None = None  # bits per second, container-wide
    start_s: float | None = None
    video_streams: tuple[VideoStream, ...] = ()  # real video: cover art excluded
    audio_streams: tuple[AudioStream, ...] = ()
    cover_art: bool = False  # an attached picture (album art), not a video
    duration_source: Literal["container", "packets"] | None = None
    other_streams: tuple[str, ...] = field(default=())  # e.g. ("Subtitle", "Data")

    @property
    def video(self) -> VideoStream | None:
        return self.video_streams[0] if self.video_streams else None

    @property
    def audio(self) -> AudioStream | None:
        return self.audio_streams[0] if self.audio_streams else None

    @property
    def has_video(self) -> bool:
        return bool(self.video_streams)

    @property
    def has_audio(self) -> bool:
        return bool(self.audio_streams)

    def as_manifest_dict(self) -> dict[str, Any]:
        """JSON-ready facts for the manifest's ``input`` object (keys always present)."""
        v, a = self.video, self.audio
        return {
            "format": self.format,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "bit_rate": self.bit_rate,
            "has_video": self.has_video,
            "has_audio": self.has_audio,
            "width": v.display_width if v else None,
            "height": v.display_height if v else None,
            "coded_width": v.width if v else None,
            "coded_height": v.height if v else None,
            "rotation": v.rotation if v else None,
            "fps": None if v is None or v.fps is None else round(v.fps, 3),
            "video_codec": v.codec if v else None,
            "pix_fmt": v.pix_fmt if v else None,
            "hdr": v.hdr if v else None,
            "audio_codec": a.codec if a else None,
            "sample_rate": a.sample_rate if a else None,
            "channels": a.channels if a else None,
            "channel_layout": a.channel_layout if a else None,
            "video_streams": len(self.video_streams),
            "audio_streams": len(self.audio_streams),
            "cover_art": self.cover_art,
        }


def probe(path: Path, *, timeout: float = 30, deadline: float | None = None) -> MediaInfo:
    """Media facts of ``path``; :class:`InputError` when it is not media ffmpeg can read."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:  # the runner's download went missing: not the input's fault
        raise MediaToolError(f"cannot read the downloaded input: {exc}") from exc
    if size == 0:
        raise InputError("not a media file ffmpeg can read: the file is empty (0 bytes)")

    started = time.monotonic()
    # Raw argv: a command with no output (ffmpeg-python cannot build one); ffmpeg
    # prints the input's streams and exits 1.
    result = run_ffmpeg(
        input_args(path),
        deadline=deadline,
        timeout=timeout,
        check=False,
        head_chars=PROBE_HEAD_CHARS,
    )
    if result.stderr_head_full:
        raise InputError(
            "the file's stream list is too large to read (over "
            f"{PROBE_HEAD_CHARS >> 20} MiB of stream descriptions and tags)"
        )
    info = parse_probe_output(result.stderr_head, size)
    if info is None:
        failure = classify_failure(result.stderr_lines)
        if failure.kind == "config":  # our own probe command: this ffmpeg refuses it
            raise HandlerConfigError(f"ffmpeg refused the probe command: {failure.detail}")
        if failure.kind == "tool":
            tail = " | ".join(failure.tail)[-500:]
            raise MediaToolError(f"ffmpeg could not probe the input: {tail or 'no output'}")
        raise InputError(
            f"not a media file ffmpeg can read: {failure.summary} (ffmpeg: {failure.detail})"
        )
    if not info.has_video and not info.has_audio:
        what = "only a still picture" if info.cover_art else "no audio or video streams"
        raise InputError(f"not a media file ffmpeg can read: it has {what} ({info.format})")
    if info.format == "wav":
        # ffmpeg quietly shrinks a WAV's claimed length to the file and decodes what
        # is there, so a cut-off upload would otherwise pass as a shorter good file.
        reason = wav_truncation(path, size)
        if reason:
            raise InputError(f"the input is truncated or corrupt: {reason}")

    if info.duration_s is None:
        # Streamed WebM (browser recordings), raw H.264: no duration in the header.
        remaining = max(1.0, timeout - (time.monotonic() - started))
        duration = _duration_from_packets(path, remaining, deadline)
        if duration is not None:
            info = _replace_duration(info, duration)
    log.debug("probed", path=path.name, format=info.format, duration_s=info.duration_s)
    return info


_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # recorders that stream write these, then fix up


def wav_truncation(path: Path, size: int) -> str | None:
    """Why a RIFF/WAVE file is shorter than its own header says, or None."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None  # RF64/BW64 and others keep sizes elsewhere
    offset = 12
    while offset + 8 <= len(head):
        chunk, length = (
            head[offset : offset + 4],
            int.from_bytes(head[offset + 4 : offset + 8], "little"),
        )
        if chunk == b"data":
            present = size - (offset + 8)
            if length in _WAV_UNKNOWN_SIZES or length <= present:
                return None
            if length - present <= max(4096, length // 100):
                return None  # a few missing bytes: a sloppy writer, not a cut-off file
            return f"the WAV header promises {length} bytes of audio but the file holds {present}"
        offset += 8 + length + (length & 1)
    return None


def _duration_from_packets(path: Path, timeout: float, deadline: float | None) -> float | None:
    started = time.monotonic()
    # Stream copy to the null muxer reads every packet without decoding: fast. Raw
    # elementary streams (.h264) have no packet timestamps, so decode as a fallback.
    for extra in ({"c": "copy"}, {}):
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            break
        packets = media_input(path).output("-", f="null", **extra)
        try:
            result = run_ffmpeg(
                packets.get_args(),
                deadline=deadline,
                timeout=remaining,
                check=False,
            )
        except FfmpegTimeoutError:
            # An unknown duration is not fatal: handlers can still run without it.
            log.warning("probe_duration_timeout", path=path.name, timeout_s=round(timeout, 1))
            return None
        if result.out_time_s:
            return result.out_time_s
        for line in reversed(result.stderr_tail):  # older ffmpeg: the last time= stat
            if (m := _TIME_RE.search(line)) and (seconds := _hms(":".join(m.groups()))) > 0:
                return seconds
    return None


def _replace_duration(info: MediaInfo, duration: float) -> MediaInfo:
    return replace(info, duration_s=duration, duration_source="packets")


def parse_probe_output(lines: list[str], size_bytes: int = 0) -> MediaInfo | None:
    """Parse ``ffmpeg -i`` stderr; None when there is no ``Input #0`` block."""
    fmt: str | None = None
    duration: float | None = None
    start: float | None = None
    bit_rate: int | None = None
    videos: list[VideoStream] = []
    audios: list[AudioStream] = []
    others: list[str] = []
    cover_art = False
    last_video: int | None = None  # position in ``videos`` that side data belongs to

    for line in lines:
        if fmt is None:
            if m := _INPUT_RE.match(line):
                fmt = m.group("format")
            continue
        if line.startswith(("Input #", "Output #", "Stream mapping")) or (
            not line.startswith(" ") and "output file" in line
        ):
            break  # another input, or past the input dump
        if m := _DURATION_RE.match(line):
            duration = None if m.group("value") == "N/A" else _hms(m.group("value"))
            if s := _START_RE.search(line):
                start = float(s.group(1))
            if b := _BITRATE_RE.search(line):
                bit_rate = int(b.group(1)) * 1000
            continue
        if m := _STREAM_RE.match(line):
            last_video = None
            kind, rest, index = m.group("kind"), m.group("rest"), int(m.group("index"))
            if kind == "Video":
                if "(attached pic)" in rest:
                    cover_art = True
                    continue
                stream = _parse_video(index, rest)
                if stream is not None:
                    videos.append(stream)
                    last_video = len(videos) - 1
            elif kind == "Audio":
                audios.append(_parse_audio(index, rest))
            else:
                others.append(kind)
            continue
        if last_video is not None and (r := _ROTATION_RE.search(line)):
            videos[last_video] = replace(videos[last_video], rotation=float(r.group(1)) + 0.0)

    if fmt is None:
        return None
    if duration is not None and duration <= 0:
        duration = None
    return MediaInfo(
        format=fmt,
        duration_s=duration,
        size_bytes=size_bytes,
        bit_rate=bit_rate,
        start_s=start,
        video_streams=tuple(videos),
        audio_streams=tuple(audios),
        cover_art=cover_art,
        duration_source="container" if duration is not None else None,
        other_streams=tuple(others),
    )


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside (...) or [...]: ``yuv420p(tv, bt709)`` stays whole."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _parse_video(index: int, rest: str) -> VideoStream | None:
    parts = split_top_level(rest)
    if not parts:
        return None
    codec_part = parts[0]
    codec = codec_part.split()[0]
    profile = None
    if (p := re.search(r"\(([^()/]+)\)", codec_part)) and "/" not in p.group(1):
        profile = p.group(1).strip()
    width = height = 0
    pix_fmt: str | None = None
    details: list[str] = []
    for i, part in enumerate(parts[1:], start=1):
        if d := _DIMS_RE.match(part):
            width, height = int(d.group(1)), int(d.group(2))
        elif i == 1 and not _RATE_RE.search(part) and "kb/s" not in part:
            name, _, paren = part.partition("(")
            pix_fmt = name.strip() or None
            details = [x.strip() for x in paren.rstrip(")").split(",") if x.strip()]
    fps = None
    rates: dict[str, float] = {}
    for part in parts[1:]:
        if r := _RATE_RE.search(part):
            value = float(r.group(1)) * (1000 if r.group(2) else 1)
            rates.setdefault(r.group(3), value)
    fps = rates.get("fps") or rates.get("tbr")
    sar = None
    if s := _SAR_RE.search(rest):
        sar = (int(s.group(1)), int(s.group(2)))
    bit_rate = None
    for part in parts[1:]:
        if (k := _KBPS_RE.fullmatch(part.split(" (")[0].strip())) is not None:
            bit_rate = int(k.group(1)) * 1000
    interlaced = any(x.endswith("first") or "first (swapped)" in x for x in details)
    transfer = None
    for x in details:
        if x.count("/") == 2:  # "colorspace/primaries/transfer"
            transfer = x.split("/")[2]
        elif x.startswith(("bt", "smpte", "arib")) and "/" not in x:
            transfer = x  # one name for all three
    return VideoStream(
        index=index,
        codec=codec,
        width=width,
        height=height,
        fps=fps,
        pix_fmt=pix_fmt,
        profile=profile,
        sar=sar,
        interlaced=interlaced,
        color_transfer=transfer,
        bit_rate=bit_rate,
    )


def _parse_audio(index: int, rest: str) -> AudioStream:
    parts = split_top_level(rest)
    codec = parts[0].split()[0] if parts else "unknown"
    sample_rate = None
    layout = None
    bit_rate = None
    for i, part in enumerate(parts[1:], start=1):
        if h := _HZ_RE.match(part):
            sample_rate = int(h.group(1))
            if i + 1 < len(parts):
                layout = parts[i + 1]
        elif (k := _KBPS_RE.fullmatch(part.split(" (")[0].strip())) is not None:
            bit_rate = int(k.group(1)) * 1000
    return AudioStream(
        index=index,
        codec=codec,
        sample_rate=sample_rate,
        channels=channels_of(layout) if layout else None,
        channel_layout=layout,
        bit_rate=bit_rate,
    )


def channels_of(layout: str) -> int | None:
    """Channel count of an ffmpeg layout name: "stereo" 2, "5.1(side)" 6, "3 channels" 3."""
    name = layout.split("(")[0].strip().lower()
    if name in _NAMED_LAYOUTS:
        return _NAMED_LAYOUTS[name]
    if m := re.fullmatch(r"(\d+) channels?", name):
        return int(m.group(1))
    if m := re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", name):  # 5.1, 7.1.4
        return sum(int(g) for g in m.groups() if g)
    return None


def _hms(value: str) -> float:
    h, m, s = value.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)
