"""Test videos of real faces, built with ffmpeg from photographs that ship in wheels.

- ``astronaut``: Eileen Collins (NASA, public domain), ``skimage/data/astronaut.png``
  in scikit-image's wheel;
- ``hopper``: Grace Hopper (US Navy, public domain),
  ``matplotlib/mpl-data/sample_data/grace_hopper.jpg`` in matplotlib's wheel.

The files are found with ``importlib.util.find_spec``, without importing either
package. Each photo is cropped around its face, so a small frame still shows a face
well over the route's minimum size. Like tests/media.py, ffmpeg runs directly here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tests.media import _ffmpeg

# Where each photo is and the square crop (x, y, side) around its face.
_PHOTOS = {
    "astronaut": ("skimage", "data/astronaut.png", (130, 30, 180)),
    "hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", (110, 70, 330)),
}


def photo_path(name: str) -> Path:
    package, rel, _ = _PHOTOS[name]
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    assert path.is_file(), path
    return path


@dataclass(frozen=True, slots=True)
class Shot:
    """One span of a test video: these photos side by side, ``height`` px tall, for
    ``seconds``; ``blur`` (a boxblur radius) softens it, ``pan`` moves it sideways."""

    photos: tuple[str, ...]
    seconds: float
    height: int = 240
    blur: int = 0
    pan: int = 40


def make_face_video(
    path: Path, shots: list[Shot], size: tuple[int, int] = (640, 360), fps: int = 10
) -> Path:
    """An H.264 video of ``shots`` one after the other on a grey background."""
    width, height = size
    args: list[str] = []
    chains: list[str] = []
    n_input = 0
    for s, shot in enumerate(shots):
        parts = []
        for name in shot.photos:
            _, _, (x, y, side) = _PHOTOS[name]
            args += ["-loop", "1", "-framerate", str(fps), "-t", str(shot.seconds)]
            args += ["-i", str(photo_path(name))]
            label = f"p{s}_{len(parts)}"
            chains.append(
                f"[{n_input}:v]crop={side}:{side}:{x}:{y},scale={shot.height}:{shot.height},"
                f"setsar=1,format=rgb24[{label}]"
            )
            parts.append(f"[{label}]")
            n_input += 1
        fg = f"fg{s}"
        if len(parts) > 1:
            chains.append(f"{''.join(parts)}hstack=inputs={len(parts)}[{fg}]")
        else:
            chains.append(f"{parts[0]}null[{fg}]")
        if shot.blur:
            chains.append(f"[{fg}]boxblur={shot.blur}:2[{fg}b]")
            fg += "b"
        chains.append(
            f"color=c=0x707070:s={width}x{height}:r={fps}:d={shot.seconds}[bg{s}];"
            f"[bg{s}][{fg}]overlay=x='(W-w)/2+{shot.pan}*sin(t*2)':y='(H-h)/2':"
            f"shortest=1,format=yuv420p[v{s}]"
        )
    chains.append(
        f"{''.join(f'[v{s}]' for s in range(len(shots)))}concat=n={len(shots)}:v=1:a=0[out]"
    )
    _ffmpeg(
        [
            *args,
            "-filter_complex",
            ";".join(chains),
            "-map",
            "[out]",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-r",
            str(fps),
            str(path),
        ]
    )
    return path


def make_face_still(path: Path, name: str = "hopper") -> Path:
    """The photo re-encoded as ``path``'s format (.jpg or .png), at its own size."""
    _ffmpeg(["-i", str(photo_path(name)), "-frames:v", "1", str(path)])
    return path
