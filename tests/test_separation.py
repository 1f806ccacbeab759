"""The batched engine computes what demucs' apply_model (the CLI) computes."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from demucs.apply import apply_model

from gpu.models import load_model
from gpu.separation import SeparationSettings, mix_stats, plan_passes, separate
from tests.models_for_tests import make_tiny_store

# Float32 rounding of the normalisation statistics; a wrong segment, window or
# padding shows up as 1e-3 and more.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_store(tmp_path_factory.mktemp("models"))


def _mix(seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(44100 * seconds)) / 44100
    tone = 0.3 * torch.sin(2 * torch.pi * 220 * t)
    return (tone + 0.1 * torch.randn(2, t.shape[0], generator=g)).float()


def _cli(model, wav: torch.Tensor, seed: int, **kwargs) -> torch.Tensor:
    """What `python -m demucs` computes (api.Separator.separate_tensor)."""
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    random.seed(seed)
    return apply_model(model, ((wav - mean) / std)[None], **kwargs)[0] * std + mean


def _engine(
    model, wav: torch.Tensor, out: Path, seed: int, device: str = "cpu", **settings
) -> np.ndarray:
    mix = np.ascontiguousarray(wav.numpy().T)
    paths = separate(
        model,
        mix,
        out,
        settings=SeparationSettings(**settings),
        rng=random.Random(seed),
        device=device,
    )
    stems = [np.fromfile(paths[s], np.float32).reshape(-1, 2).T for s in model.sources]
    return np.stack(stems)


@pytest.mark.parametrize(
    ("name", "seconds", "shifts", "batch_size", "overlap"),
    [
        ("htdemucs", 2.6, 1, 1, 0.25),  # the CLI defaults
        ("htdemucs", 2.6, 1, 4, 0.25),  # batched
        ("htdemucs", 0.4, 0, 2, 0.25),  # shorter than one segment
        ("tiny_bag", 1.7, 0, 3, 0.5),  # weighted bag of two
        ("tiny_6s", 1.3, 1, 2, 0.1),  # six sources
    ],
)
def test_engine_matches_apply_model(
    store: Path, tmp_path: Path, name: str, seconds: float, shifts: int, batch_size: int,
    overlap: float,
) -> None:  # fmt: skip
    model = load_model(name, store=store).model
    wav = _mix(seconds)
    expected = _cli(model, wav, 7, shifts=shifts, overlap=overlap).numpy()
    got = _engine(model, wav, tmp_path, 7, shifts=shifts, overlap=overlap, batch_size=batch_size)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE


def test_pipelined_path_matches(store: Path, tmp_path: Path) -> None:
    """The threaded producer/device/consumer path (GPUs) computes the same stems.

    "cpu:0" is a CPU device that is not the plain "cpu" the in-turn path is for.
    """
    model = load_model("tiny_bag", store=store).model
    wav = _mix(2.2)
    expected = _cli(model, wav, 1, shifts=0).numpy()
    got = _engine(model, wav, tmp_path, 1, device="cpu:0", shifts=0, batch_size=2)
    assert np.abs(got - expected).max() < TOLERANCE


def test_segment_override_matches(store: Path, tmp_path: Path) -> None:
    model = load_model("htdemucs", store=store).model
    wav = _mix(1.5)
    expected = _cli(model, wav, 3, shifts=0, segment=0.5).numpy()
    got = _engine(model, wav, tmp_path, 3, shifts=0, segment=0.5, batch_size=3)
    assert np.abs(got - expected).max() < TOLERANCE


def test_silence_separates_to_silence(store: Path, tmp_path: Path) -> None:
    model = load_model("htdemucs", store=store).model
    got = _engine(model, torch.zeros(2, 30000), tmp_path, 0, shifts=1)
    assert np.isfinite(got).all() and np.abs(got).max() == 0


def test_mix_stats_match_torch() -> None:
    wav = _mix(1.0, seed=5)
    stats = mix_stats(np.ascontiguousarray(wav.numpy().T))
    ref = wav.mean(0)
    assert stats.mean == pytest.approx(float(ref.mean()), abs=1e-7)
    assert stats.std == pytest.approx(float(ref.std()) + 1e-8, rel=1e-6)


def test_device_work_does_not_grow_with_length(store: Path) -> None:
    """Each forward pass sees batch_size segments of fixed length, however long the mix."""
    model = load_model("htdemucs", store=store).model
    for seconds in (3, 600):
        _, segments = plan_passes(model, 44100 * seconds, SeparationSettings(), random.Random(0))
        assert {s.valid_length for s in segments} == {44100}
    _, long = plan_passes(model, 44100 * 600, SeparationSettings(), random.Random(0))
    assert len(long) > 700  # 10 minutes: many bounded steps, not one big one
