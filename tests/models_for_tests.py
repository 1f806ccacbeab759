"""Tiny demucs models with random weights, saved exactly as a released model dir.

A real demucs repo folder holds ``<sig>-<sha256[:8]>.th`` files (a ``torch.save``
of ``{"klass", "args", "kwargs", "state", "training_args"}`` with half-precision
state, written by ``demucs.states.save_with_checksum``) and ``<name>.yaml`` bag
files listing signatures. These helpers write the same files, so the store's
real loading code (demucs' LocalRepo/BagOnlyRepo, checksum check included) runs
on them. Weights are random: separation quality is not what is tested.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

SOURCES = ["drums", "bass", "other", "vocals"]

# Small enough that a few seconds of audio separate in well under a second on 2 cores.
TINY_KWARGS: dict[str, Any] = {
    "channels": 4,
    "depth": 4,
    "nfft": 4096,
    "t_layers": 1,
    "t_heads": 2,
    "t_hidden_scale": 1.0,
    "dconv_comp": 4,
    "segment": Fraction(1, 1),
}
# The released htdemucs architecture (channels, depth, transformer, 7.8 s segments).
FULL_KWARGS: dict[str, Any] = {"bottom_channels": 512, "segment": Fraction(39, 5)}


def save_model(model: Any, repo: Path, sig: str) -> Path:
    """Write ``model`` as ``repo/<sig>-<sha8>.th``, the way demucs' release files are."""
    from demucs.states import get_state, save_with_checksum

    args, kwargs = model._init_args_kwargs
    package = {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": get_state(model, None, half=True),
        "training_args": {},
    }
    repo.mkdir(parents=True, exist_ok=True)
    save_with_checksum(package, repo / f"{sig}.th")
    (path,) = repo.glob(f"{sig}-*.th")
    return path


def make_htdemucs(seed: int, sources: list[str] | None = None, **overrides: Any) -> Any:
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    kwargs = {**TINY_KWARGS, **overrides}
    return HTDemucs(sources=list(sources or SOURCES), **kwargs)


def write_bag(repo: Path, name: str, sigs: list[str], weights: list[list[float]] | None = None):
    lines = [f"models: {sigs!r}"]
    if weights is not None:
        lines.append(f"weights: {weights!r}")
    (repo / f"{name}.yaml").write_text("\n".join(lines) + "\n")


def make_tiny_store(repo: Path) -> Path:
    """A model dir with ``htdemucs`` (one tiny model), ``tiny_bag`` (two, weighted) and
    ``tiny_6s`` (six sources), each a yaml bag over ``.th`` files, as demucs ships them."""
    save_model(make_htdemucs(1), repo, "aaaa0001")
    write_bag(repo, "htdemucs", ["aaaa0001"])
    save_model(make_htdemucs(2), repo, "bbbb0002")
    save_model(make_htdemucs(3), repo, "cccc0003")
    write_bag(
        repo,
        "tiny_bag",
        ["bbbb0002", "cccc0003"],
        [[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 0.5, 1.0]],
    )
    six = [*SOURCES, "guitar", "piano"]
    save_model(make_htdemucs(4, six), repo, "dddd0004")
    write_bag(repo, "tiny_6s", ["dddd0004"])
    return repo


def make_full_size_store(repo: Path, name: str = "htdemucs") -> Path:
    """The full-size HTDemucs architecture with random weights (for the benchmark)."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    save_model(HTDemucs(sources=list(SOURCES), **FULL_KWARGS), repo, "ffff0001")
    write_bag(repo, name, ["ffff0001"])
    return repo
