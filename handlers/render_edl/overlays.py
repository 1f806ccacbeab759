"""Timed text and image overlays on the output timeline (``enable=between(t,...)``).

Text is drawn with the font shipped in ``handlers/media/assets`` from a text file
(no filter-graph escaping of user text, no ``%{...}`` expansion). An image's type is
read from its first bytes, and it is opened with the one demuxer that type needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ffmpeg
from ffmpeg.nodes import FilterableStream

from handlers.exceptions import InputError
from handlers.media.decode_caps import DecodeCaps
from handlers.media.ffmpeg_run import ffmpeg_number as num
from handlers.media.ffmpeg_run import media_input
from handlers.render_edl.models import ImageOverlay, TextOverlay, _Overlay

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "png_pipe"),
    (b"\xff\xd8\xff", 0, "jpeg_pipe"),
    (b"WEBP", 8, "webp_pipe"),
)


@dataclass(frozen=True, slots=True)
class PreparedOverlay:
    spec: TextOverlay | ImageOverlay
    path: Path  # the text file, or the image
    demuxer: str | None = None  # images only


def image_demuxer(path: Path, what: str) -> str:
    """The demuxer for a PNG/JPEG/WebP file, from its first bytes; else an InputError."""
    with path.open("rb") as fh:
        head = fh.read(16)
    for magic, at, demuxer in _MAGIC:
        if head[at : at + len(magic)] == magic:
            return demuxer
    raise InputError(f"{what}: not a PNG, JPEG or WebP image")


def enable(spec: _Overlay) -> str:
    end = "1e9" if spec.end is None else num(spec.end)
    return f"between(t,{num(spec.start)},{end})"


def _place(spec: _Overlay, w: str, h: str, margin_x: int, margin_y: int) -> tuple[str, str]:
    """x, y of the overlay's top-left corner; ``w``/``h``: the variables of its size."""
    pos = spec.position  # type: ignore[attr-defined]
    col = "left" if "left" in pos else "right" if "right" in pos else "center"
    row = "top" if pos.startswith("top") else "bottom" if pos.startswith("bottom") else "center"
    x = {"left": f"{margin_x}", "center": f"(W-{w})/2", "right": f"W-{w}-{margin_x}"}[col]
    y = {"top": f"{margin_y}", "center": f"(H-{h})/2", "bottom": f"H-{h}-{margin_y}"}[row]
    if spec.x is not None:
        x = f"W*{num(spec.x)}-{w}/2"
    if spec.y is not None:
        y = f"H*{num(spec.y)}-{h}/2"
    return x, y


def text_size(spec: TextOverlay, out: tuple[int, int]) -> int:
    """The given size, or height / 18 made smaller until the longest line fits."""
    if spec.size:
        return spec.size
    longest = max((len(line) for line in spec.text.splitlines()), default=1)
    fit = int(0.92 * out[0] / (0.65 * max(1, longest)))  # DejaVu Bold: ~0.65 em a glyph
    return max(8, min(out[1] // 18, fit))


def draw_text(
    stream: FilterableStream, ov: PreparedOverlay, font: Path, out: tuple[int, int]
) -> FilterableStream:
    spec = ov.spec
    assert isinstance(spec, TextOverlay)
    size = text_size(spec, out)
    # drawtext names the frame W/H as w/h; _place writes W/H for both filters.
    x, y = _place(spec, "text_w", "text_h", out[0] // 20, out[1] // 20)
    box = {"box": 1, "boxcolor": spec.box_color, "boxborderw": max(2, size // 3)}
    return stream.filter(
        "drawtext",
        fontfile=str(font),
        textfile=str(ov.path),
        expansion="none",
        fontsize=size,
        fontcolor=spec.color,
        **(box if spec.box else {}),
        x=x.replace("W", "w").replace("H", "h"),
        y=y.replace("W", "w").replace("H", "h"),
        enable=enable(spec),
    )


def place_image(
    stream: FilterableStream, ov: PreparedOverlay, out: tuple[int, int], caps: DecodeCaps
) -> FilterableStream:
    spec = ov.spec
    assert isinstance(spec, ImageOverlay) and ov.demuxer is not None
    width = max(2, round(out[0] * spec.scale / 2) * 2)
    image = media_input(ov.path, format_whitelist=(ov.demuxer,), caps=caps, f=ov.demuxer).video
    image = image.filter("scale", width, -1).filter("format", "rgba")
    if spec.opacity < 1:
        image = image.filter("colorchannelmixer", aa=num(spec.opacity))
    x, y = _place(spec, "overlay_w", "overlay_h", out[0] // 30, out[0] // 30)
    x = x.replace("W", "main_w").replace("H", "main_h")
    y = y.replace("W", "main_w").replace("H", "main_h")
    # A still image is one frame: repeat it for the whole window. The overlay's default
    # yuv420 blending keeps the video's format (format=auto costs ~20% more CPU here).
    return ffmpeg.overlay(stream, image, x=x, y=y, eof_action="repeat", enable=enable(spec))
