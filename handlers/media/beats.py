"""Beat tracking shared by the ``highlights`` and ``render`` routes.

librosa's beat tracker (onset strength, a tempo estimate from its autocorrelation,
then dynamic programming over the onsets, Ellis 2007) runs on mono float PCM that
ffmpeg already decoded. librosa is imported on first use: the watcher imports
handler modules and never tracks beats.

The tempo is not librosa's tempogram estimate (quantised to whole onset frames:
128 BPM reads as 129.2) but the slope of a least-squares line through the beat
times, which averages the frame rounding out.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handlers.exceptions import InputError

BEATS_NAME = "beats.json"
BEAT_RATE = 16_000  # PCM rate the tracker reads: plenty for onsets, cheap to decode
_HOP = 256  # onset frames of 16 ms at 16 kHz
_MAX_BEATS = 1_000_000
_CHUNK_S = 120


@dataclass(frozen=True, slots=True)
class Beats:
    tempo_bpm: float | None  # None: fewer than two beats
    times: tuple[float, ...]  # seconds, increasing

    def document(self) -> dict[str, Any]:
        """The ``beats.json`` object."""
        return {
            "version": 1,
            "tempo_bpm": self.tempo_bpm,
            "beat_count": len(self.times),
            "beats": list(self.times),
        }


def track_beats(samples: np.ndarray, sample_rate: int = BEAT_RATE) -> Beats:
    """Beats of mono PCM ``samples``; silence (or too little audio) gives no beats."""
    y = np.asarray(samples, dtype=np.float32)
    if len(y) < sample_rate or not np.any(np.abs(y) > 1e-4):
        return Beats(None, ())
    import librosa  # heavy (numba): loaded only by a job that tracks beats

    # The onset envelope chunk by chunk: a whole match's spectrogram would not fit in
    # memory, while the envelope is one number per 16 ms.
    step = _CHUNK_S * sample_rate // _HOP * _HOP
    envelope = np.concatenate(
        [
            librosa.onset.onset_strength(y=y[i : i + step], sr=sample_rate, hop_length=_HOP)[
                : step // _HOP
            ]
            for i in range(0, len(y), step)
        ]
    )
    _, frames = librosa.beat.beat_track(onset_envelope=envelope, sr=sample_rate, hop_length=_HOP)
    times = librosa.frames_to_time(np.asarray(frames), sr=sample_rate, hop_length=_HOP)
    return Beats(tempo_from_times(times), tuple(round(float(t), 3) for t in times))


def warm_up_beats() -> None:
    """Import librosa and compile its numba kernels on two seconds of clicks, so a warm
    worker's first job does not pay for it (a Modal container calls this at start)."""
    t = np.arange(2 * BEAT_RATE) / BEAT_RATE
    clicks = (np.mod(t, 0.5) < 0.02) * np.sin(2 * np.pi * 1000 * t)
    track_beats(clicks.astype(np.float32), BEAT_RATE)


def tempo_from_times(times: Sequence[float] | np.ndarray) -> float | None:
    """BPM from the slope of beat time against beat number."""
    times = np.asarray(times, dtype=np.float64)
    if len(times) < 2:
        return None
    slope = float(np.polyfit(np.arange(len(times)), times, 1)[0])
    return round(60.0 / slope, 2) if slope > 0 else None


def snap(t: float, beats: Sequence[float]) -> float:
    """The beat nearest ``t`` (``t`` itself when there are none)."""
    if not beats:
        return t
    i = bisect_left(beats, t)
    near = [beats[j] for j in (i - 1, i) if 0 <= j < len(beats)]
    return min(near, key=lambda b: (abs(b - t), b))


def write_beats(beats: Beats, path: Path) -> Path:
    path.write_text(json.dumps(beats.document(), indent=1))
    return path


def read_beats(path: Path, what: str = "beats") -> Beats:
    """A ``beats.json`` (this module's, or any ``{"beats": [seconds...]}``) as Beats."""
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{what}: not a beats.json (invalid JSON: {exc})") from exc
    raw = doc.get("beats") if isinstance(doc, dict) else None
    if not isinstance(raw, list) or len(raw) > _MAX_BEATS:
        raise InputError(f"{what}: a beats.json needs a 'beats' list of at most {_MAX_BEATS} times")
    if not all(isinstance(t, int | float) and math.isfinite(t) and t >= 0 for t in raw):
        raise InputError(f"{what}: every beat must be a number of seconds >= 0")
    times = tuple(sorted(float(t) for t in raw))
    tempo = doc.get("tempo_bpm")
    if not isinstance(tempo, int | float) or not math.isfinite(tempo) or tempo <= 0:
        tempo = tempo_from_times(times)
    return Beats(float(tempo) if tempo is not None else None, times)
