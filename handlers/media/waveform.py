"""Waveform peaks (JSON) and a waveform picture (PNG) from decoded audio.

ffmpeg decodes the audio once to a mono 32-bit float PCM file (as one more
output of a handler's main ffmpeg run: :func:`pcm_output`); numpy reduces it to
min/max pairs at a fixed number of points per second, read in chunks so a
four-hour file never sits in memory. The JSON is the layout of BBC
``audiowaveform`` (version 2), which peaks.js, wavesurfer.js and audio editors
read directly. The PNG is drawn from the same peaks with numpy and encoded by
ffmpeg, so picture and JSON always agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ffmpeg
import numpy as np
import structlog
from ffmpeg.nodes import FilterableStream, OutputStream
from pydantic import Field

from handlers.media.decode_caps import DecodeCaps
from handlers.media.ffmpeg_run import file_url, media_input, run_ffmpeg
from handlers.protocol import HandlerParams, OutputFile

log = structlog.get_logger(__name__)

PEAKS_NAME = "waveform.json"
PNG_NAME = "waveform.png"
# Peaks are measured on audio resampled to at least this rate: enough to keep
# transients (drum hits) without decoding at 48 kHz.
MIN_PCM_RATE = 16_000
_CHUNK_POINTS = 65_536  # peak points reduced per read (memory stays flat)
_BACKGROUND = (16, 20, 24)
_WAVE = (79, 195, 247)
_AXIS = (60, 70, 80)


class WaveformParams(HandlerParams):
    points_per_second: int = Field(
        50, ge=1, le=1000, description="min/max pairs per second in waveform.json"
    )
    bits: Literal[8, 16] = Field(8, description="integer range of the peaks: 8 or 16 bits")
    width: int = Field(1800, ge=64, le=8192, description="waveform.png width in pixels")
    height: int = Field(280, ge=32, le=2048, description="waveform.png height in pixels")


@dataclass(frozen=True, slots=True)
class PcmFormat:
    sample_rate: int  # what ffmpeg resamples to
    samples_per_point: int  # PCM samples behind one min/max pair

    @classmethod
    def for_points_per_second(cls, pps: int) -> PcmFormat:
        # An integer number of samples per point keeps the point rate exact.
        spp = math.ceil(MIN_PCM_RATE / pps)
        return cls(sample_rate=pps * spp, samples_per_point=spp)


def pcm_output(
    audio: FilterableStream, path: Path, sample_rate: int, *, caps: DecodeCaps | None = None
) -> OutputStream:
    """An ffmpeg-python output writing ``audio`` as mono float32 PCM to ``path``.

    With ``caps`` it stops a little past the duration cap (``DecodeCaps.output_t``)."""
    opts: dict[str, Any] = {"f": "f32le", "acodec": "pcm_f32le", "ac": 1, "ar": sample_rate}
    if caps is not None and (limit := caps.output_t()) is not None:
        opts["t"] = limit
    return ffmpeg.output(audio, file_url(path), **opts)


def read_pcm(path: Path) -> np.ndarray:
    """The decoded PCM, memory-mapped (empty array for an empty file)."""
    if path.stat().st_size < 4:
        return np.zeros(0, dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r")


def compute_peaks(pcm: np.ndarray, samples_per_point: int) -> np.ndarray:
    """(n, 2) float32 array of (min, max) per point, in [-1, 1]; the last point may be partial."""
    n = math.ceil(len(pcm) / samples_per_point)
    out = np.zeros((n, 2), dtype=np.float32)
    step = _CHUNK_POINTS * samples_per_point
    for first in range(0, len(pcm), step):
        chunk = np.asarray(pcm[first : first + step], dtype=np.float32)
        points = len(chunk) // samples_per_point
        row = first // samples_per_point
        if points:
            block = chunk[: points * samples_per_point].reshape(points, samples_per_point)
            out[row : row + points, 0] = block.min(axis=1)
            out[row : row + points, 1] = block.max(axis=1)
        rest = chunk[points * samples_per_point :]
        if len(rest):
            out[row + points] = (rest.min(), rest.max())
    np.clip(out, -1.0, 1.0, out=out)
    return out


def peaks_document(
    peaks: np.ndarray, fmt: PcmFormat, bits: int, *, points_per_second: int
) -> dict[str, Any]:
    """audiowaveform v2 JSON: ``data`` is [min0, max0, min1, max1, ...] as integers."""
    scale = 127 if bits == 8 else 32767
    data = np.round(peaks * scale).astype(np.int32).reshape(-1)
    return {
        "version": 2,
        "channels": 1,
        "sample_rate": fmt.sample_rate,
        "samples_per_pixel": fmt.samples_per_point,
        "bits": bits,
        "length": len(peaks),
        # Not part of the audiowaveform layout; readers ignore unknown keys.
        "points_per_second": points_per_second,
        "duration_s": round(len(peaks) / points_per_second, 3),
        "data": data.tolist(),
    }


def draw_waveform(peaks: np.ndarray, width: int, height: int) -> np.ndarray:
    """An RGB picture (height, width, 3) of the peaks, min/max bars around a centre line."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = _BACKGROUND
    mid = (height - 1) / 2
    img[round(mid)] = _AXIS
    if len(peaks) == 0:
        return img
    # Each column covers a run of points (or repeats one, for short audio).
    starts = (np.arange(width) * len(peaks) // width).astype(np.int64)
    lo = np.minimum.reduceat(peaks[:, 0], starts)
    hi = np.maximum.reduceat(peaks[:, 1], starts)
    top = np.floor(mid - hi * mid).astype(np.int64)
    bottom = np.ceil(mid - lo * mid).astype(np.int64)
    rows = np.arange(height)[:, None]
    mask = (rows >= top[None, :]) & (rows <= bottom[None, :])
    img[mask] = _WAVE
    return img


def encode_png(rgb: np.ndarray, out_path: Path, work_dir: Path, deadline: float) -> None:
    """Encode an RGB array as PNG with ffmpeg (no imaging library needed)."""
    height, width, _ = rgb.shape
    raw = work_dir / f"{out_path.stem}.rgb"
    raw.write_bytes(np.ascontiguousarray(rgb).tobytes())
    try:
        # Our own raw pixels: the only demuxer needed is rawvideo.
        source = media_input(
            raw,
            format_whitelist=("rawvideo",),
            f="rawvideo",
            pix_fmt="rgb24",
            video_size=(width, height),
        )
        png = source.output(file_url(out_path), **{"frames:v": 1, "update": 1, "c:v": "png"})
        run_ffmpeg(png.get_args(), deadline=deadline)
    finally:
        raw.unlink(missing_ok=True)


def write_waveform(
    pcm_path: Path,
    output_dir: Path,
    work_dir: Path,
    params: WaveformParams,
    *,
    deadline: float,
    prefix: str = "",
) -> tuple[list[OutputFile], dict[str, Any]]:
    """waveform.json + waveform.png from a PCM file written by :func:`pcm_output`."""
    fmt = PcmFormat.for_points_per_second(params.points_per_second)
    pcm = read_pcm(pcm_path)
    peaks = compute_peaks(pcm, fmt.samples_per_point)
    doc = peaks_document(peaks, fmt, params.bits, points_per_second=params.points_per_second)
    json_path = output_dir / f"{prefix}{PEAKS_NAME}"
    png_path = output_dir / f"{prefix}{PNG_NAME}"
    json_path.write_text(json.dumps(doc, separators=(",", ":")))
    encode_png(draw_waveform(peaks, params.width, params.height), png_path, work_dir, deadline)
    peak = float(np.abs(peaks).max()) if len(peaks) else 0.0
    summary = {
        "waveform_points": len(peaks),
        "waveform_points_per_second": params.points_per_second,
        "audio_peak_dbfs": round(20 * math.log10(peak), 2) if peak > 0 else None,
        "decoded_audio_s": round(len(pcm) / fmt.sample_rate, 3),
    }
    log.debug("waveform_written", points=len(peaks), png=png_path.name)
    outputs = [
        OutputFile(json_path.name, json_path, "waveform-peaks", "application/json"),
        OutputFile(png_path.name, png_path, "waveform", "image/png"),
    ]
    return outputs, summary
