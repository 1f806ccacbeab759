"""The ``frames`` route: JPEG frames at a fixed rate, ``frames.json`` and a contact sheet.

Pass 1 decodes the video once and writes ``frame-000001.jpg``, ... at ``fps``
frames per second (default 1), optionally capped in count and long-side size.
Timestamps are exact by construction: ffmpeg's ``fps`` filter emits frame *i*
at ``i / fps`` seconds from the start of the video (the start is reset to 0, so
MPEG-TS clock offsets do not leak in). Pass 2 tiles up to ``sheet_max_tiles``
evenly chosen frames, each labelled with its time, into ``contact-sheet.jpg``;
it reads the small JPEGs pass 1 wrote, never the video again.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import ffmpeg
from pydantic import Field

from handlers.exceptions import MediaToolError
from handlers.media.checks import (
    MediaLimits,
    check_complete,
    coerce_params,
    decode_caps,
    display_size,
    fit_even,
    probe_input,
)
from handlers.media.encode import font_file, prepare_video
from handlers.media.extensions import VIDEO_EXTENSIONS
from handlers.media.ffmpeg_run import (
    ffmpeg_number,
    file_url,
    media_input,
    run_ffmpeg,
)
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile

FRAME_PATTERN = "frame-%06d.jpg"
FRAMES_JSON = "frames.json"
SHEET_NAME = "contact-sheet.jpg"
_SHEET_BG = "0x101418"


class FramesParams(MediaLimits):
    fps: float = Field(1.0, ge=0.001, le=30, description="frames per second to extract")
    max_frames: int = Field(
        600, ge=1, le=10_000, description="at most this many frames (each is one upload)"
    )
    max_size: int | None = Field(
        None, ge=16, le=8192, description="long side of each frame at most (None: source size)"
    )
    quality: int = Field(3, ge=2, le=31, description="JPEG qscale: 2 best .. 31 smallest")
    sheet_columns: int = Field(6, ge=1, le=20, description="contact sheet columns")
    sheet_tile_width: int = Field(320, ge=64, le=1024, description="contact sheet tile width")
    sheet_max_tiles: int = Field(
        48, ge=1, le=400, description="frames on the contact sheet (evenly chosen)"
    )
    sheet_labels: bool = Field(True, description="print each tile's timestamp on it")


class FramesHandler:
    name: ClassVar[str] = "frames"
    version: ClassVar[str] = "1.0.0"
    # Self-description (handlers.protocol.HandlerInfo): Modal image, GPU, default routes.
    modal_image: ClassVar[str] = "ffmpeg"
    gpu_kind: ClassVar[str] = "video"
    default_routes: ClassVar[dict[str, dict[str, Any]]] = {"frames": {}}
    Params: ClassVar[type[HandlerParams]] = FramesParams
    extensions: ClassVar[frozenset[str]] = VIDEO_EXTENSIONS

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params = coerce_params(ctx.params, FramesParams)
        log = ctx.log.bind(handler=self.name)
        probed = probe_input(ctx, self.name, params, needs="video")
        info, video = probed.info, probed.video
        assert video is not None  # needs="video"
        size = fit_even(*display_size(video), max_long=params.max_size)
        # Reading stops once max_frames are out: a 600-frame cap on a 4-hour file
        # must not decode the whole file. Or a little past the duration cap: a frame at
        # i/fps lasts 1/fps, so the output may reach that far past the input's end.
        caps = replace(decode_caps(params, info), slack_s=1 / params.fps)
        read_s = min(params.max_frames / params.fps, float(caps.input_t() or 0))
        expected = min(info.duration_s, read_s, params.max_duration_s) if info.duration_s else None

        src = media_input(ctx.input_path, caps=caps, t=ffmpeg_number(read_s, 3))
        v = prepare_video(src[str(video.index)], video).filter("setpts", "PTS-STARTPTS")
        # round=up: frame i is the picture on screen at i/fps (default "near" takes a
        # frame up to half a period later).
        v = v.filter("fps", ffmpeg_number(params.fps), round="up")
        v = v.filter("scale", size[0], size[1]).filter("setsar", 1)
        out = ffmpeg.output(
            v,
            file_url(ctx.output_dir / FRAME_PATTERN),
            f="image2",
            start_number=1,
            **{"frames:v": params.max_frames, "q:v": params.quality, "pix_fmt": "yuvj420p"},
        )
        try:
            run_ffmpeg(
                out.get_args(),
                deadline=ctx.deadline,
                duration_s=expected,
                progress=lambda f: ctx.progress(0.9 * f, "extract"),
                caps=caps,
            )
            frames = sorted(ctx.output_dir.glob("frame-*.jpg"))
            if not frames:
                raise MediaToolError("ffmpeg wrote no frames")
            check_complete(expected, len(frames) / params.fps)
            ctx.progress(0.92, "contact-sheet")
            sheet = make_contact_sheet(frames, size, params, ctx.work_dir, ctx.deadline)
            sheet_path = ctx.output_dir / SHEET_NAME
            sheet["path"].replace(sheet_path)
        except BaseException:
            for path in ctx.output_dir.iterdir():
                path.unlink(missing_ok=True)
            raise

        doc = frames_document(frames, size, params, sheet)
        (ctx.output_dir / FRAMES_JSON).write_text(json.dumps(doc, indent=1))
        outputs = [
            OutputFile(p.name, p, "frame", "image/jpeg") for p in frames
        ] + [
            OutputFile(FRAMES_JSON, ctx.output_dir / FRAMES_JSON, "frames-index",
                       "application/json"),
            OutputFile(SHEET_NAME, sheet_path, "contact-sheet", "image/jpeg"),
        ]  # fmt: skip
        log.info("frames_done", count=len(frames), capped=doc["capped"])
        summary = {k: doc[k] for k in ("fps", "count", "width", "height", "capped")}
        summary["contact_sheet"] = {k: v for k, v in doc["contact_sheet"].items() if k != "frames"}
        return HandlerResult(outputs=outputs, media=info.as_manifest_dict(), summary=summary)


def frame_time(index: int, fps: float) -> float:
    """Seconds from the start of the video of 0-based frame ``index``."""
    return round(index / fps, 3)


def sheet_indices(count: int, max_tiles: int) -> list[int]:
    """Evenly spaced frame indices, first frame always included, at most ``max_tiles``."""
    if count <= max_tiles:
        return list(range(count))
    return sorted({math.floor(i * count / max_tiles) for i in range(max_tiles)})


def make_contact_sheet(
    frames: list[Path],
    size: tuple[int, int],
    params: FramesParams,
    work_dir: Path,
    deadline: float,
) -> dict[str, Any]:
    """Tile the chosen frames (labelled with their time) into one JPEG in ``work_dir``."""
    chosen = sheet_indices(len(frames), params.sheet_max_tiles)
    tile_w = min(params.sheet_tile_width, size[0]) // 2 * 2
    tile_h = max(2, round(tile_w * size[1] / size[0] / 2) * 2)
    cols = min(params.sheet_columns, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    font = font_file(work_dir) if params.sheet_labels else None
    tiles = []
    for i in chosen:
        # Our own JPEGs: the only demuxer needed is jpeg_pipe.
        t = media_input(frames[i], format_whitelist=("jpeg_pipe",), f="jpeg_pipe").video
        t = t.filter("scale", tile_w, tile_h).filter("setsar", 1).filter("format", "yuv420p")
        if font is not None:
            t = t.filter(
                "drawtext",
                fontfile=str(font),
                text=_clock(frame_time(i, params.fps)),
                expansion="none",
                fontsize=max(10, tile_h // 9),
                fontcolor="white",
                box=1,
                boxcolor="black@0.6",
                boxborderw=3,
                x=4,
                y="h-th-6",
            )
        tiles.append(t)
    joined = ffmpeg.concat(*tiles, v=1, a=0) if len(tiles) > 1 else tiles[0]
    sheet = joined.filter("tile", f"{cols}x{rows}", padding=4, margin=4, color=_SHEET_BG)
    path = work_dir / SHEET_NAME
    out = ffmpeg.output(sheet, file_url(path), **{"frames:v": 1, "update": 1, "q:v": 3})
    run_ffmpeg(out.get_args(), deadline=deadline)
    return {
        "path": path,
        "columns": cols,
        "rows": rows,
        "tile_width": tile_w,
        "tile_height": tile_h,
        "frames": chosen,
    }


def frames_document(
    frames: list[Path], size: tuple[int, int], params: FramesParams, sheet: dict[str, Any]
) -> dict[str, Any]:
    return {
        "version": 1,
        "fps": params.fps,
        "count": len(frames),
        "width": size[0],
        "height": size[1],
        "capped": len(frames) >= params.max_frames,
        "frames": [
            {"index": i, "name": p.name, "time_s": frame_time(i, params.fps)}
            for i, p in enumerate(frames)
        ],
        "contact_sheet": {
            "name": SHEET_NAME,
            **{k: sheet[k] for k in ("columns", "rows", "tile_width", "tile_height", "frames")},
        },
    }


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:06.3f}" if h else f"{m:d}:{s:06.3f}"
