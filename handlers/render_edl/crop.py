"""Crop keyframes as ffmpeg expressions of time, built once per segment.

The crop window has the output's shape; ``zoom`` 1 is the widest such window that
fits the source frame, ``zoom`` 2 half its width and height. Its centre follows the
keyframes: piecewise linear or smoothstep-eased between them, held at the first and
last keyframe outside them (so keyframes outside a segment clamp to its ends).

A window of fixed size is one ``crop`` filter whose ``x``/``y`` are expressions of
``t`` (seconds since the segment's start, before any speed change). A zoom that
changes over time needs a window whose size changes: the ``crop`` then cuts the
widest window the segment needs and ``zoompan`` (one output frame per input frame)
cuts the zoomed window inside it and scales it to the output size.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from ffmpeg.nodes import FilterableStream

from handlers.media.ffmpeg_run import ffmpeg_number as num
from handlers.render_edl.models import Crop, Keyframe


@dataclass(frozen=True, slots=True)
class Track:
    """One crop parameter over a segment: (time since the segment's start, value)."""

    points: tuple[tuple[float, float], ...]
    smooth: bool

    @property
    def constant(self) -> bool:
        return len({v for _, v in self.points}) == 1

    def expr(self, var: str) -> str:
        """The value at time ``var`` (an expression) as one ffmpeg expression."""
        pts = self.points
        if self.constant:
            return num(pts[0][1])
        out = num(pts[-1][1])
        for (t0, v0), (t1, v1) in reversed(list(itertools.pairwise(pts))):
            since = f"{var}-{num(t0)}" if t0 >= 0 else f"{var}+{num(-t0)}"
            u = f"(({since})/{num(t1 - t0)})"
            shape = f"{u}*{u}*(3-2*{u})" if self.smooth else u
            out = f"if(lt({var},{num(t1)}),{num(v0)}+{num(v1 - v0)}*{shape},{out})"
        return f"if(lt({var},{num(pts[0][0])}),{num(pts[0][1])},{out})"

    def at(self, t: float) -> float:
        """The value at ``t``: the same curve as :meth:`expr`, in Python."""
        pts = self.points
        if t <= pts[0][0]:
            return pts[0][1]
        for (t0, v0), (t1, v1) in itertools.pairwise(pts):
            if t < t1:
                u = (t - t0) / (t1 - t0)
                return v0 + (v1 - v0) * (u * u * (3 - 2 * u) if self.smooth else u)
        return pts[-1][1]


@dataclass(frozen=True, slots=True)
class SegmentCrop:
    x: Track
    y: Track
    zoom: Track


def segment_crop(crop: Crop, start: float, end: float) -> SegmentCrop:
    """The keyframes that shape [start, end], on the segment's own clock (0 at ``start``).

    Keyframes between two others outside the segment do not change it: only the last
    one before ``start``, those inside and the first one after ``end`` are kept.
    """
    kfs = _relevant(crop.points(), start, end)

    def track(attr: str) -> Track:
        return Track(
            tuple((k.t - start, float(getattr(k, attr))) for k in kfs), crop.ease == "smooth"
        )

    return SegmentCrop(track("x"), track("y"), track("zoom"))


def _relevant(kfs: Sequence[Keyframe], start: float, end: float) -> list[Keyframe]:
    before = [k for k in kfs if k.t <= start][-1:]
    inside = [k for k in kfs if start < k.t < end]
    after = [k for k in kfs if k.t >= end][:1]
    return [*before, *inside, *after]


def window_size(src: tuple[int, int], out: tuple[int, int], zoom: float) -> tuple[int, int]:
    """The crop window (even pixels) of the output's shape in a ``src`` frame at ``zoom``."""
    sw, sh = src
    aspect = out[0] / out[1]
    w, h = min(sw, sh * aspect) / zoom, min(sh, sw / aspect) / zoom
    return max(2, int(w / 2) * 2), max(2, int(h / 2) * 2)


def apply_crop(
    stream: FilterableStream,
    sc: SegmentCrop,
    *,
    src: tuple[int, int],
    out: tuple[int, int],
    fps: int,
    speed: float,
    source_fps: float | None,
) -> FilterableStream:
    """Crop, play at ``speed``, resample to ``fps`` and scale to ``out``."""
    # The widest window the segment needs; t is seconds since the segment's start.
    widest = min(v for _, v in sc.zoom.points)
    cw, ch = window_size(src, out, widest)
    cx, cy = sc.x.expr("t"), sc.y.expr("t")
    stream = stream.filter(
        "crop", cw, ch, x=f"clip(iw*{cx}-ow/2,0,iw-ow)", y=f"clip(ih*{cy}-oh/2,0,ih-oh)"
    )
    if speed != 1:
        stream = stream.filter("setpts", f"PTS/{num(speed)}")
    if sc.zoom.constant:
        # Frames dropped before scaling cost nothing; frames repeated after it neither.
        if source_fps is None or source_fps * speed >= fps:
            return stream.filter("fps", fps).filter("scale", out[0], out[1]).filter("setsar", 1)
        return stream.filter("scale", out[0], out[1]).filter("setsar", 1).filter("fps", fps)
    stream = stream.filter("fps", fps)
    # zoompan sees constant-rate frames numbered by ``on``: frame n shows the source
    # n * speed / fps seconds after the segment's start.
    tau = f"(on*{num(speed / fps, 9)})"
    sw, sh = src
    # Where the window centre is inside the widest window, which the crop clamped.
    px = f"st(0,{sw}*{sc.x.expr(tau)});ld(0)-clip(ld(0)-{cw}/2,0,{sw - cw})"
    py = f"st(1,{sh}*{sc.y.expr(tau)});ld(1)-clip(ld(1)-{ch}/2,0,{sh - ch})"
    return stream.filter(
        "zoompan",
        z=f"{sc.zoom.expr(tau)}/{num(widest)}",
        x=f"clip(({px})-iw/zoom/2,0,iw-iw/zoom)",
        y=f"clip(({py})-ih/zoom/2,0,ih-ih/zoom)",
        d=1,
        s=f"{out[0]}x{out[1]}",
        fps=fps,
    ).filter("setsar", 1)
