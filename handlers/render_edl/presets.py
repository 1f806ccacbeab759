"""Output presets of the ``render`` route: the frame sizes social platforms expect."""

from __future__ import annotations

from typing import Literal

PresetName = Literal["vertical-916", "portrait-45", "square", "landscape-169"]

# (width, height); every preset is 30 fps H.264/AAC.
PRESETS: dict[str, tuple[int, int]] = {
    "vertical-916": (1080, 1920),
    "portrait-45": (1080, 1350),
    "square": (1080, 1080),
    "landscape-169": (1920, 1080),
}
PRESET_FPS = 30
