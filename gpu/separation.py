"""Batched, memory-bounded source separation with demucs models.

The math is demucs' ``apply_model`` (the CLI's): normalise the mix by the mean and
standard deviation of its mono sum, apply the random-shift trick, split each
shifted copy into overlapping segments, run the model on each (padded with the
neighbouring audio exactly as ``TensorChunk.padded`` does), weight each segment
with the same triangular window and divide by the summed weights; average the
shifts, weight and average the models of a bag, undo the normalisation.

What differs is how the work is scheduled:

- segments are stacked into batches of ``batch_size`` per forward pass;
- the full-length mix and the stems live in host files (``np.memmap``), never
  on the device, so device memory depends on ``batch_size`` and the segment
  length only, and resident host memory stays bounded too (the OS pages the
  files); a finished region of each pass is folded into the stems as soon as
  no later segment overlaps it, so no full-length temporary exists;
- on a GPU, a producer thread cuts, normalises and pins the next batch while
  the model runs, and a consumer thread copies results back and does the
  overlap-add, so the device does not wait on host work. On a CPU the stages
  run in turn: there the host *is* the device, and helper threads only take
  cores from torch's own threads (measured slower).

``random`` offsets for the shift trick are drawn from a ``random.Random`` in the
same order as ``apply_model`` draws them from the ``random`` module, so with the
same seed both produce the same result up to float rounding.
"""

from __future__ import annotations

import bisect
import contextlib
import queue
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger(__name__)

# Samples read per step when scanning the whole mix (statistics, finalising).
_SCAN_BLOCK = 1 << 20
_QUEUE_DEPTH = 2


@dataclass(frozen=True, slots=True)
class SeparationSettings:
    shifts: int = 1  # random-shift passes (demucs CLI default 1); 0 disables the trick
    overlap: float = 0.25
    segment: float | None = None  # seconds; None: the model's own
    batch_size: int = 4  # segments per forward pass
    transition_power: float = 1.0


@dataclass(frozen=True, slots=True)
class MixStats:
    mean: float
    std: float  # already includes demucs' + 1e-8


@dataclass(slots=True)
class _Segment:
    pass_index: int
    offset: int  # pass-local start
    length: int  # samples it covers (shorter at the end)
    read_start: int  # mix index of the first sample fed to the model (may be < 0)
    valid_length: int  # samples fed to the model


@dataclass(slots=True)
class _Pass:
    model_index: int
    to_mix: int  # mix index = pass-local index + to_mix
    length: int  # pass-local length
    offsets: list[int]
    lengths: list[int]
    segment_length: int
    weight: Any  # torch tensor, the transition window


def mix_stats(mix: np.ndarray) -> MixStats:
    """demucs' ``ref = wav.mean(0); ref.mean(), ref.std() + 1e-8`` over a (T, C) array."""
    total = 0.0
    squares = 0.0
    n = mix.shape[0]
    for start in range(0, n, _SCAN_BLOCK):
        ref = mix[start : start + _SCAN_BLOCK].astype(np.float64).mean(axis=1)
        total += float(ref.sum())
        squares += float(np.square(ref).sum())
    mean = total / n
    var = max(0.0, (squares - n * mean * mean) / max(1, n - 1))  # unbiased, like torch.std
    return MixStats(mean=mean, std=float(np.sqrt(var)) + 1e-8)


def sub_models(model: Any) -> tuple[list[Any], list[list[float]]]:
    from demucs.apply import BagOfModels

    if isinstance(model, BagOfModels):
        return list(model.models), [list(map(float, w)) for w in model.weights]
    return [model], [[1.0] * len(model.sources)]


def _valid_length(model: Any, segment: float | None, length: int) -> int:
    from demucs.htdemucs import HTDemucs

    # Same rule as apply_model's innermost call.
    if isinstance(model, HTDemucs) and segment is not None:
        return int(segment * model.samplerate)
    if hasattr(model, "valid_length"):
        return int(model.valid_length(length))
    return length


def plan_passes(
    model: Any, length: int, settings: SeparationSettings, rng: random.Random
) -> tuple[list[_Pass], list[_Segment]]:
    """Every (model, shift) pass and its segments, in apply_model's order."""
    import torch

    models, _ = sub_models(model)
    passes: list[_Pass] = []
    segments: list[_Segment] = []
    for m_index, sub in enumerate(models):
        max_shift = int(0.5 * sub.samplerate)
        if settings.shifts:
            # apply_model pads the mix by max_shift each side and takes
            # [offset, offset + length + max_shift - offset) of that.
            shifts = [rng.randint(0, max_shift) for _ in range(settings.shifts)]
            layouts = [(off - max_shift, length + max_shift - off) for off in shifts]
        else:
            layouts = [(0, length)]
        segment = settings.segment if settings.segment is not None else sub.segment
        seg_len = int(sub.samplerate * segment)
        stride = int((1 - settings.overlap) * seg_len)
        weight = torch.cat(
            [torch.arange(1, seg_len // 2 + 1), torch.arange(seg_len - seg_len // 2, 0, -1)]
        )
        weight = (weight / weight.max()) ** settings.transition_power
        for to_mix, pass_len in layouts:
            offsets = list(range(0, pass_len, stride))
            lengths = [min(pass_len - o, seg_len) for o in offsets]
            p_index = len(passes)
            passes.append(_Pass(m_index, to_mix, pass_len, offsets, lengths, seg_len, weight))
            for o, n in zip(offsets, lengths, strict=True):
                valid = _valid_length(sub, settings.segment, n)
                read_start = to_mix + o - (valid - n) // 2
                segments.append(_Segment(p_index, o, n, read_start, valid))
    return passes, segments


def read_padded(mix: np.ndarray, start: int, n: int, stats: MixStats) -> np.ndarray:
    """Normalised mix[start:start+n] as (C, n), zeros outside the mix.

    TensorChunk.padded semantics: the padding is zeros of the *normalised* mix.
    """
    out = np.zeros((mix.shape[1], n), dtype=np.float32)
    lo, hi = max(0, start), min(mix.shape[0], start + n)
    if hi > lo:
        part = (mix[lo:hi].T - np.float32(stats.mean)) / np.float32(stats.std)
        out[:, lo - start : hi - start] = part
    return out


class _Accumulator:
    """Overlap-add of one pass; folds finished regions into the stem files.

    Plain numpy on purpose: torch ops on this thread would start a second OpenMP
    team that competes with the forward pass for the same CPU cores.
    """

    def __init__(self, p: _Pass, stems: list[np.ndarray], scales: list[float], mix_len: int):
        self.p = p
        self.stems = stems
        self.scales = scales
        self.mix_len = mix_len
        self.weight = p.weight.numpy()
        self.pending = np.zeros((len(stems), stems[0].shape[1], p.segment_length), np.float32)
        self.base = 0  # pass-local index of pending[..., 0]

    def add(self, offset: int, out: np.ndarray) -> None:
        """``out`` (S, C, n): the model output for the segment at ``offset``."""
        self._flush(offset)
        n = out.shape[-1]
        self.pending[..., :n] += self.weight[:n] * out

    def finish(self) -> None:
        self._flush(self.p.length)

    def _flush(self, upto: int) -> None:
        n = upto - self.base
        if n <= 0:
            return
        done = self.pending[..., :n] / self._sum_weight(self.base, upto)
        self._fold(self.base, done)
        keep = self.pending.shape[-1] - n
        if keep > 0:
            self.pending[..., :keep] = self.pending[..., n:].copy()
            self.pending[..., keep:] = 0
        else:
            self.pending[...] = 0
        self.base = upto

    def _sum_weight(self, a: int, b: int) -> np.ndarray:
        p = self.p
        total = np.zeros(b - a, np.float32)
        first = max(0, bisect.bisect_right(p.offsets, a - p.segment_length))
        for k in range(first, len(p.offsets)):
            o, n = p.offsets[k], p.lengths[k]
            if o >= b:
                break
            lo, hi = max(a, o), min(b, o + n)
            if hi > lo:
                total[lo - a : hi - a] += self.weight[lo - o : hi - o]
        return total

    def _fold(self, start: int, values: np.ndarray) -> None:
        lo = start + self.p.to_mix
        hi = lo + values.shape[-1]
        a, b = max(0, lo), min(self.mix_len, hi)
        if b <= a:
            return
        part = values[..., a - lo : b - lo]
        for s, (stem, scale) in enumerate(zip(self.stems, self.scales, strict=True)):
            if scale:
                stem[a:b] += (part[s] * np.float32(scale)).T


def separate(
    model: Any,
    mix: np.ndarray,
    out_dir: Path,
    *,
    settings: SeparationSettings = SeparationSettings(),
    device: str = "cpu",
    rng: random.Random | None = None,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Path]:
    """Separate a (T, C) float32 mix at the model's rate into ``out_dir/<source>.f32``.

    Each output is raw interleaved float32 (T, C), the layout ffmpeg reads as
    ``-f f32le``. ``should_stop`` is polled between batches (job deadline).
    """
    import torch

    rng = rng or random.Random()
    length, channels = mix.shape
    if channels != model.audio_channels:
        raise ValueError(f"mix has {channels} channels, the model wants {model.audio_channels}")
    stats = mix_stats(mix)
    sources = list(model.sources)
    models, weights = sub_models(model)
    shifts = max(1, settings.shifts)
    totals = [sum(w[s] for w in weights) for s in range(len(sources))]

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.f32" for name in sources}
    # Raw float32 files, no header: exactly what ffmpeg reads as -f f32le.
    stems = [np.memmap(paths[n], np.float32, "w+", shape=mix.shape) for n in sources]
    passes, segments = plan_passes(model, length, settings, rng)
    accs = []
    for p in passes:
        w = weights[p.model_index]
        scales = [w[s] / shifts / totals[s] if totals[s] else 0.0 for s in range(len(sources))]
        accs.append(_Accumulator(p, stems, scales, length))
    for sub in models:
        sub.to(device).eval()

    pin = device.startswith("cuda")  # page-locked buffers copy to the GPU asynchronously

    def make_input(batch: list[_Segment]) -> Any:
        x = torch.from_numpy(
            np.stack([read_padded(mix, s.read_start, s.valid_length, stats) for s in batch])
        )
        return x.pin_memory() if pin else x

    def fold(batch: list[_Segment], y: Any) -> None:
        y = y.float().cpu().numpy()
        for i, seg in enumerate(batch):
            acc = accs[seg.pass_index]
            acc.add(seg.offset, _center_trim(y[i], seg.length))
            if seg.offset == passes[seg.pass_index].offsets[-1]:
                acc.finish()

    def forward(batch: list[_Segment], x: Any) -> Any:
        if should_stop and should_stop():
            raise TimeoutError("separation stopped: the job deadline passed")
        sub = models[passes[batch[0].pass_index].model_index]
        return sub(x.to(device, non_blocking=pin))

    batches = list(_batches(segments, passes, settings.batch_size))
    done = 0

    def report(batch: list[_Segment]) -> None:
        nonlocal done
        done += len(batch)
        if progress:
            progress(done / len(segments))

    with torch.inference_mode():
        if device == "cpu":
            # The host *is* the device: helper threads would only take cores from
            # torch's own threads (measured slower), so run the stages in turn.
            for batch in batches:
                fold(batch, forward(batch, make_input(batch)))
                report(batch)
        else:
            _pipelined(batches, make_input, forward, fold, report)

    # stem = acc * std + mean, in place, block by block.
    for stem in stems:
        for start in range(0, length, _SCAN_BLOCK):
            block = stem[start : start + _SCAN_BLOCK]
            block *= np.float32(stats.std)
            block += np.float32(stats.mean)
        stem.flush()
    del stems
    log.debug("separated", segments=len(segments), passes=len(passes), length=length)
    return paths


def _pipelined(
    batches: list[list[_Segment]],
    make_input: Callable[[list[_Segment]], Any],
    forward: Callable[[list[_Segment], Any], Any],
    fold: Callable[[list[_Segment], Any], None],
    report: Callable[[list[_Segment]], None],
) -> None:
    """Device runs batch n while a producer prepares n+1 and a consumer folds n-1."""
    inputs: queue.Queue[Any] = queue.Queue(_QUEUE_DEPTH)
    results: queue.Queue[Any] = queue.Queue(_QUEUE_DEPTH)
    stop = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                inputs.put((batch, make_input(batch)))
        except BaseException as exc:
            failure.append(exc)
        finally:
            inputs.put(None)

    def consume() -> None:
        try:
            while (item := results.get()) is not None:
                fold(*item)
        except BaseException as exc:
            failure.append(exc)
            stop.set()
            while results.get() is not None:  # keep the device loop from blocking
                pass

    producer = threading.Thread(target=produce, name="separation-producer", daemon=True)
    consumer = threading.Thread(target=consume, name="separation-consumer", daemon=True)
    producer.start()
    consumer.start()
    try:
        while not stop.is_set() and (item := inputs.get()) is not None:
            batch, x = item
            results.put((batch, forward(batch, x)))
            report(batch)
    finally:
        stop.set()
        while producer.is_alive():  # drain so a blocked producer can exit
            with contextlib.suppress(queue.Empty):
                inputs.get(timeout=0.05)
        results.put(None)
        consumer.join()
    if failure:
        raise failure[0]


def _center_trim(t: Any, length: int) -> Any:
    delta = t.shape[-1] - length
    return t[..., delta // 2 : t.shape[-1] - (delta - delta // 2)] if delta else t


def _batches(segments: list[_Segment], passes: list[_Pass], size: int) -> Iterator[list[_Segment]]:
    """Consecutive segments of one model and one input length, ``size`` at a time."""
    batch: list[_Segment] = []
    for seg in segments:
        if batch and (
            len(batch) >= size
            or seg.valid_length != batch[0].valid_length
            or passes[seg.pass_index].model_index != passes[batch[0].pass_index].model_index
        ):
            yield batch
            batch = []
        batch.append(seg)
    if batch:
        yield batch
