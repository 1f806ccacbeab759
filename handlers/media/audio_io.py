"""Audio in and out for separation handlers, all through :func:`run_ffmpeg`.

- :func:`decode_to_f32` turns any input ffmpeg reads (wav, flac, mp3, m4a, a video's
  audio track) into raw interleaved float32 at the model's rate and channel count,
  written to a file the separation engine memory-maps.
- :func:`encode_stem` turns one raw float32 stem into the output format and, in
  the same ffmpeg run, renders its waveform PNG (``showwavespic``) and measures
  its sample peak and integrated loudness (``ebur128``, EBU R128 / BS.1770).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ffmpeg
import structlog

from handlers.media.decode_caps import DecodeCaps
from handlers.media.ffmpeg_run import file_url, input_args, media_input, run_ffmpeg

log = structlog.get_logger(__name__)

AudioFormat = Literal["flac", "wav", "mp3", "opus"]
EXTENSIONS: dict[str, str] = {"flac": "flac", "wav": "wav", "mp3": "mp3", "opus": "opus"}
CONTENT_TYPES: dict[str, str] = {
    "flac": "audio/flac",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
}
DEFAULT_BITRATE_KBPS: dict[str, int] = {"mp3": 320, "opus": 192}
OPUS_RATE = 48000  # libopus only takes 48/24/16/12/8 kHz
WAVEFORM_SIZE = (1200, 240)
# Per-stem waveform colours, so a page of PNGs reads at a glance.
_COLOURS = {
    "vocals": "0xE8546B",
    "drums": "0xF5A623",
    "bass": "0x4A90E2",
    "other": "0x7ED321",
    "guitar": "0xBD10E0",
    "piano": "0x50E3C2",
}
_LOUDNESS_RE = re.compile(r"^\s*I:\s+(-?[\d.]+|-inf|nan)\s+LUFS")
_PEAK_RE = re.compile(r"^\s*Peak:\s+(-?[\d.]+|-inf|inf|nan)\s+dBFS")
_SILENCE_LUFS = -70.0  # ebur128's absolute gate: anything at or below is silence


@dataclass(frozen=True, slots=True)
class EncodedStem:
    name: str
    path: Path
    waveform: Path | None
    sample_rate: int
    peak_dbfs: float | None  # None: digital silence
    loudness_lufs: float | None  # None: silence (below the -70 LUFS gate)


def decode_to_f32(
    source: Path,
    dest: Path,
    *,
    stream_index: int,
    sample_rate: int,
    channels: int,
    source_channels: int | None,
    max_duration_s: float,
    deadline: float | None,
    duration_s: float | None = None,
    progress: Callable[[float], None] | None = None,
) -> int:
    """Decode one audio stream to raw float32 frames in ``dest``; returns the frame count.

    Decoding past ``max_duration_s`` (a container that claims less, ``duration_s``) is
    an :class:`~handlers.exceptions.InputError`, as :class:`DecodeCaps` enforces it.
    """
    caps = DecodeCaps(max_duration_s=max_duration_s, declared_s=duration_s)
    audio = media_input(source, caps=caps)[str(stream_index)]
    layout: dict[str, int] = {}
    if source_channels == 1 and channels == 2:
        # Mono to stereo as demucs does it (the same signal both sides); ffmpeg's
        # default upmix would lower it by 3 dB. (channelmap, not "pan=stereo|c0=c0|c1=c0":
        # ffmpeg-python over-escapes the "=" in a filter argument.)
        audio = audio.filter("channelmap", map="0-FL|0-FR", channel_layout="stereo")
    else:
        layout["ac"] = channels
    out = ffmpeg.output(
        audio,
        file_url(dest),
        **layout,
        **{"ar": sample_rate, "t": caps.output_t(), "c:a": "pcm_f32le", "f": "f32le"},
        **{"vn": None, "sn": None, "dn": None},
    )
    run_ffmpeg(
        out.get_args(), deadline=deadline, duration_s=duration_s, progress=progress, caps=caps
    )
    return dest.stat().st_size // (4 * channels)


def encoder_args(fmt: AudioFormat, *, bitrate_kbps: int | None, bit_depth: int) -> list[str]:
    if fmt == "flac":
        if bit_depth == 16:
            return ["-c:a", "flac", "-sample_fmt", "s16"]
        return ["-c:a", "flac", "-sample_fmt", "s32", "-bits_per_raw_sample", "24"]
    if fmt == "wav":
        codec = {16: "pcm_s16le", 24: "pcm_s24le", 32: "pcm_f32le"}[bit_depth]
        return ["-c:a", codec]
    kbps = bitrate_kbps or DEFAULT_BITRATE_KBPS[fmt]
    if fmt == "mp3":
        return ["-c:a", "libmp3lame", "-b:a", f"{kbps}k"]
    return ["-c:a", "libopus", "-b:a", f"{kbps}k", "-ar", str(OPUS_RATE)]


def encode_stem(
    name: str,
    raw: Path,
    out_dir: Path,
    *,
    sample_rate: int,
    channels: int,
    fmt: AudioFormat,
    bitrate_kbps: int | None,
    bit_depth: int,
    waveform: bool,
    deadline: float | None,
) -> EncodedStem:
    """Encode ``raw`` (f32le) to ``out_dir/<name>.<ext>`` (+ ``<name>.png``) and measure it."""
    out = out_dir / f"{name}.{EXTENSIONS[fmt]}"
    png = out_dir / f"{name}.png" if waveform else None
    raw_in = ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels)]
    graph = ["[0:a]asplit=3[enc][wave][meter]" if png else "[0:a]asplit=2[enc][meter]"]
    if png:
        w, h = WAVEFORM_SIZE
        colour = _COLOURS.get(name, "0x9B9B9B")
        graph.append(f"[wave]showwavespic=s={w}x{h}:split_channels=1:colors={colour}[png]")
    graph.append("[meter]ebur128=framelog=quiet:peak=sample,anullsink")
    # Raw argv: the meter branch ends in a sink filter, which ffmpeg-python cannot express.
    args = [
        *input_args(raw, format_whitelist=None, options=raw_in),
        *("-filter_complex", ";".join(graph)),
        *("-map", "[enc]", *encoder_args(fmt, bitrate_kbps=bitrate_kbps, bit_depth=bit_depth)),
        file_url(out),
    ]
    if png:
        args += ["-map", "[png]", "-frames:v", "1", "-c:v", "png", "-update", "1", file_url(png)]
    try:
        result = run_ffmpeg(args, deadline=deadline)
    except BaseException:
        out.unlink(missing_ok=True)
        if png:
            png.unlink(missing_ok=True)
        raise
    loudness, peak = parse_ebur128(result.stderr_tail)
    return EncodedStem(
        name=name,
        path=out,
        waveform=png,
        sample_rate=OPUS_RATE if fmt == "opus" else sample_rate,
        peak_dbfs=peak,
        loudness_lufs=loudness,
    )


def parse_ebur128(lines: list[str]) -> tuple[float | None, float | None]:
    """(integrated loudness LUFS, sample peak dBFS) from ebur128's summary; None for silence."""
    loudness = peak = None
    for line in lines:
        if m := _LOUDNESS_RE.match(line):
            loudness = _finite(m.group(1))
            if loudness is not None and loudness <= _SILENCE_LUFS:
                loudness = None
        elif m := _PEAK_RE.match(line):
            peak = _finite(m.group(1))
    return loudness, peak


def _finite(text: str) -> float | None:
    value = float(text)
    return round(value, 2) if math.isfinite(value) else None
