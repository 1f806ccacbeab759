"""The ``stems`` and ``karaoke`` routes: demucs source separation.

``stems`` writes one file per source of the model (htdemucs: drums, bass, other,
vocals); ``karaoke`` (``two_stems = "vocals"``) writes ``vocals`` and
``no_vocals`` (the sum of the other sources, as ``demucs --two-stems`` does).
Each stem also gets a waveform PNG, and the manifest's ``result`` carries the
model, sample rate, duration and per-stem peak and loudness.

The model is loaded once per worker (kept in ``ctx.cache``) and reused by every
job. Separation runs :func:`gpu.separation.separate` (demucs' math, batched,
mix and stems on the host); see docs/stems.md for the design and memory bounds.
"""

from __future__ import annotations

import contextvars
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from gpu.exceptions import ModelStoreError
from gpu.models import DEFAULT_MODEL, LoadedModel, model_cache_key, warm_model
from gpu.separation import SeparationSettings, separate, sub_models
from handlers.exceptions import HandlerConfigError, InputError
from handlers.media.audio_io import (
    CONTENT_TYPES,
    AudioFormat,
    EncodedStem,
    decode_to_f32,
    encode_stem,
)
from handlers.media.checks import MaxDurationS, coerce_params, probe_input
from handlers.media.extensions import AUDIO_EXTENSIONS
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$"
_BLOCK = 1 << 20  # frames per step when summing stems
# Audio formats beyond the common ones, and the video containers music arrives in.
STEMS_EXTENSIONS = AUDIO_EXTENSIONS | {
    ".oga", ".wv", ".ape", ".alac", ".caf", ".mka",
    ".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mts",
}  # fmt: skip


class StemsParams(HandlerParams):
    model: str = Field(
        DEFAULT_MODEL, pattern=_NAME, description="model name in the store (htdemucs, ...)"
    )
    stems: tuple[str, ...] | None = Field(
        None, description="write only these sources (default: all the model has)"
    )
    two_stems: str | None = Field(
        None, pattern=_NAME, description="write this source and no_<source> (karaoke)"
    )
    format: AudioFormat = Field("flac", description="flac, wav, mp3 or opus")
    bitrate: int | None = Field(
        None, ge=32, le=512, description="kbit/s for mp3/opus (default 320 mp3, 192 opus)"
    )
    bit_depth: int = Field(24, description="16 or 24 for flac; 16, 24 or 32 (float) for wav")
    shifts: int = Field(1, ge=0, le=20, description="random-shift passes (demucs --shifts)")
    overlap: float = Field(0.25, ge=0.0, lt=1.0, description="segment overlap (demucs --overlap)")
    segment: float | None = Field(
        None, gt=0, le=60, description="segment seconds (default: the model's own)"
    )
    batch_size: int | None = Field(
        None, ge=1, le=64, description="segments per forward pass (default: 1 CPU, 8 CUDA)"
    )
    seed: int = Field(0, ge=0, description="seed of the random shifts (same input, same output)")
    waveform: bool = Field(True, description="write <stem>.png per stem")
    max_duration_s: MaxDurationS = 3 * 3600

    @model_validator(mode="after")
    def _check(self) -> StemsParams:
        if self.stems is not None and self.two_stems is not None:
            raise ValueError("give either stems or two_stems, not both")
        if self.stems is not None and not self.stems:
            raise ValueError("stems must name at least one source")
        if self.bit_depth not in (16, 24, 32) or (self.format == "flac" and self.bit_depth == 32):
            raise ValueError("bit_depth must be 16 or 24 (flac), 16, 24 or 32 (wav)")
        if self.bitrate is not None and self.format not in ("mp3", "opus"):
            raise ValueError("bitrate applies to mp3 and opus only")
        return self


class StemsHandler:
    name: ClassVar[str] = "stems"
    version: ClassVar[str] = "1.0.0"
    # Self-description (handlers.protocol.HandlerInfo): Modal image, GPU, default routes.
    modal_image: ClassVar[str] = "torch"
    gpu_kind: ClassVar[str] = "audio"
    default_routes: ClassVar[dict[str, dict[str, Any]]] = {
        "stems": {},
        "karaoke": {"two_stems": "vocals"},
    }
    Params: ClassVar[type[HandlerParams]] = StemsParams
    extensions: ClassVar[frozenset[str]] = STEMS_EXTENSIONS

    def required_models(self, params: HandlerParams) -> list[str]:
        """The store model a job needs (`dropgpu doctor` checks it is there)."""
        return [params.model if isinstance(params, StemsParams) else DEFAULT_MODEL]

    def warm_up(self, cache: dict[str, Any], device: str, params: HandlerParams) -> None:
        """Load the route's model before the first job (Modal's ``@modal.enter`` calls this)."""
        model = params.model if isinstance(params, StemsParams) else DEFAULT_MODEL
        warm_model(cache, model, device)

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params = coerce_params(ctx.params, StemsParams)
        log = ctx.log.bind(handler=self.name, model=params.model)
        probed = probe_input(ctx, self.name, params, needs="audio", clock=minutes)
        info, stream = probed.info, probed.audio
        assert stream is not None  # needs="audio"

        warm = model_cache_key(params.model, ctx.device) in ctx.cache
        try:
            loaded = warm_model(ctx.cache, params.model, ctx.device)
        except ModelStoreError as exc:
            raise HandlerConfigError(str(exc)) from exc
        wanted = output_plan(loaded, params)
        settings = separation_settings(loaded, params, ctx.device)

        ctx.progress(0.02, "decode")
        t0 = time.monotonic()
        mix_path = ctx.work_dir / "mix.f32"
        frames = decode_to_f32(
            ctx.input_path,
            mix_path,
            stream_index=stream.index,
            sample_rate=loaded.samplerate,
            channels=loaded.audio_channels,
            source_channels=stream.channels,
            max_duration_s=params.max_duration_s,
            deadline=ctx.deadline,
            duration_s=info.duration_s,
        )
        if frames == 0:
            raise InputError("the audio stream decodes to no samples (empty or corrupt audio)")
        decode_s = time.monotonic() - t0
        mix = np.memmap(mix_path, np.float32, "r", shape=(frames, loaded.audio_channels))

        t0 = time.monotonic()
        raw = separate(
            loaded.model,
            mix,
            ctx.work_dir / "stems",
            settings=settings,
            device=ctx.device,
            rng=random.Random(params.seed),
            progress=lambda f: ctx.progress(0.05 + 0.85 * f, "separate"),
            should_stop=lambda: time.monotonic() > ctx.deadline,
        )
        del mix
        separate_s = time.monotonic() - t0
        raw = combine(raw, wanted, loaded.audio_channels, ctx.work_dir / "stems")

        ctx.progress(0.92, "encode")
        t0 = time.monotonic()
        encoded = encode_all(raw, ctx.output_dir, loaded, params, ctx.deadline)
        encode_s = time.monotonic() - t0
        duration = frames / loaded.samplerate
        log.info(
            "stems_done",
            stems=[e.name for e in encoded],
            duration_s=round(duration, 3),
            separate_s=round(separate_s, 3),
            warm=warm,
        )
        return HandlerResult(
            outputs=outputs_of(encoded, params),
            media=info.as_manifest_dict(),
            runtime={
                "model_warm": warm,
                "model_location": loaded.entry.location,
                "batch_size": settings.batch_size,
                "decode_s": round(decode_s, 3),
                "separate_s": round(separate_s, 3),
                "encode_s": round(encode_s, 3),
                "realtime_factor": round(duration / max(separate_s, 1e-9), 2),
                **versions(),
            },
            summary=summary(loaded, params, settings, encoded, frames),
        )


def minutes(seconds: float) -> str:
    """How the stems route states durations (songs are minutes long)."""
    return f"{seconds / 60:.1f} min"


def output_plan(loaded: LoadedModel, params: StemsParams) -> dict[str, list[str]]:
    """Output stem name -> the model sources summed into it."""
    sources = loaded.sources
    listed = ", ".join(sources)
    if params.two_stems is not None:
        stem = params.two_stems
        if stem not in sources:
            raise HandlerConfigError(
                f"two_stems '{stem}' is not a source of model '{loaded.name}' ({listed})"
            )
        return {stem: [stem], f"no_{stem}": [s for s in sources if s != stem]}
    chosen = list(params.stems) if params.stems is not None else sources
    unknown = [s for s in chosen if s not in sources]
    if unknown:
        raise HandlerConfigError(
            f"stems {', '.join(unknown)} not in model '{loaded.name}' ({listed})"
        )
    return {s: [s] for s in dict.fromkeys(chosen)}


def separation_settings(
    loaded: LoadedModel, params: StemsParams, device: str
) -> SeparationSettings:
    if params.segment is not None:
        from demucs.htdemucs import HTDemucs

        limits = [float(m.segment) for m in sub_models(loaded.model)[0] if isinstance(m, HTDemucs)]
        if limits and params.segment > min(limits):
            raise HandlerConfigError(
                f"segment {params.segment:g} s is longer than model '{loaded.name}' was "
                f"trained for (at most {min(limits):g} s)"
            )
    # Batching pays on a GPU; on a CPU a batch of one measured as fast or faster.
    batch = params.batch_size or (8 if device.startswith("cuda") else 1)
    return SeparationSettings(
        shifts=params.shifts, overlap=params.overlap, segment=params.segment, batch_size=batch
    )


def combine(
    raw: dict[str, Path], wanted: dict[str, list[str]], channels: int, work: Path
) -> dict[str, Path]:
    """Raw f32 files of the output stems: sources as they are, or summed (no_vocals)."""
    out: dict[str, Path] = {}
    for name, parts in wanted.items():
        if len(parts) == 1:
            out[name] = raw[parts[0]]
            continue
        dest = work / f"{name}.sum.f32"
        sources = [np.memmap(raw[p], np.float32, "r").reshape(-1, channels) for p in parts]
        total = np.memmap(dest, np.float32, "w+", shape=sources[0].shape)
        for start in range(0, total.shape[0], _BLOCK):
            block = total[start : start + _BLOCK]
            for src in sources:
                block += src[start : start + _BLOCK]
        total.flush()
        del total, sources
        out[name] = dest
    return out


def encode_all(
    raw: dict[str, Path], out_dir: Path, loaded: LoadedModel, params: StemsParams, deadline: float
) -> list[EncodedStem]:
    """Encode every stem in parallel (one ffmpeg each: audio, PNG and meter in one pass)."""

    def one(name: str) -> EncodedStem:
        return encode_stem(
            name,
            raw[name],
            out_dir,
            sample_rate=loaded.samplerate,
            channels=loaded.audio_channels,
            fmt=params.format,
            bitrate_kbps=params.bitrate,
            bit_depth=params.bit_depth,
            waveform=params.waveform,
            deadline=deadline,
        )

    with ThreadPoolExecutor(max_workers=len(raw), thread_name_prefix="encode") as pool:
        # Each encode runs in a copy of the job's context: its ffmpeg log lines carry
        # the route, key and attempt the runner bound (pool threads start without them).
        jobs = [pool.submit(contextvars.copy_context().run, one, name) for name in raw]
        return [job.result() for job in jobs]


def outputs_of(encoded: list[EncodedStem], params: StemsParams) -> list[OutputFile]:
    outputs = [
        OutputFile(e.path.name, e.path, f"stem:{e.name}", CONTENT_TYPES[params.format])
        for e in encoded
    ]
    outputs += [
        OutputFile(e.waveform.name, e.waveform, f"waveform:{e.name}", "image/png")
        for e in encoded
        if e.waveform is not None
    ]
    return outputs


def summary(
    loaded: LoadedModel,
    params: StemsParams,
    settings: SeparationSettings,
    encoded: list[EncodedStem],
    frames: int,
) -> dict[str, Any]:
    return {
        "model": loaded.name,
        "model_sources": loaded.sources,
        "sample_rate": loaded.samplerate,
        "channels": loaded.audio_channels,
        "duration_s": round(frames / loaded.samplerate, 3),
        "frames": frames,
        "format": params.format,
        "shifts": settings.shifts,
        "overlap": settings.overlap,
        "segment_s": settings.segment,
        "stems": [
            {
                "name": e.name,
                "file": e.path.name,
                "waveform": e.waveform.name if e.waveform else None,
                "sample_rate": e.sample_rate,
                "peak_dbfs": e.peak_dbfs,
                "loudness_lufs": e.loudness_lufs,
            }
            for e in encoded
        ],
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"torch": version("torch"), "demucs": version("demucs")}
