"""Pipeline overhead of the media routes against the equivalent raw ffmpeg commands.

One generated 1080p clip (testsrc2 at 30 fps with crowd-like noise and a loud,
busy burst in the middle) is made once. For each route the whole pipeline runs
in this process on a local folder bucket with one worker (tick, claim, download,
handler, upload, manifest commit) and, in the same run, hand-written ffmpeg
commands that produce the same media outputs (same filters, encoder settings and
sizes). The ratio pipeline / raw is the overhead: probing, numpy work (peaks,
highlight scores), hashing, uploads and commit.

    python bench/bench_media.py [--seconds 60] [--routes vertical proxy frames highlights]
                                [--repeat 1] [--out bench/results/media_cpu.json]

Target: ratio <= 1.10 for vertical and proxy. CPU only: NVENC figures need a
GPU machine (run this there with --device cuda:0). Runs alternate raw and
pipeline so background load on a shared machine hits both alike; the minimum of
``--repeat`` runs is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from gpu.device import DeviceInfo  # noqa: E402
from gpu.encoders import encoder_args  # noqa: E402
from gpu.ffmpeg_binary import ffmpeg_exe, ffmpeg_version  # noqa: E402
from handlers.jobs.runner import JobRunner  # noqa: E402
from infra.log import configure_logging  # noqa: E402
from infra.storage.local import LocalFolderBucket  # noqa: E402
from watcher.config import build_config  # noqa: E402
from watcher.tick import run_tick  # noqa: E402

log = structlog.get_logger(__name__)

HANDLERS = {
    "vertical": "handlers.vertical:VerticalHandler",
    "proxy": "handlers.proxy:ProxyHandler",
    "frames": "handlers.frames:FramesHandler",
    "highlights": "handlers.highlights:HighlightsHandler",
}
TARGETS = {"vertical": 1.10, "proxy": 1.10}
X264 = encoder_args("libx264")
PHASES = ("download_s", "process_s", "upload_s")


def ffmpeg(*args: str) -> None:
    argv = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def make_input(path: Path, seconds: int) -> None:
    a, b = seconds * 0.5, seconds * 0.5 + 4
    ffmpeg(
        "-filter_complex",
        f"color=c=0x406040:s=1920x1080:r=30:d={seconds}[bg];"
        f"testsrc2=s=1920x1080:r=30:d={seconds}[m];"
        f"[bg][m]overlay=enable='between(t,{a},{b})+lt(mod(t,10),3)'[v];"
        f"anoisesrc=a=0.03:d={seconds}:r=48000:seed=3,"
        f"volume='if(between(t,{a},{b}),20,1)':eval=frame,aformat=channel_layouts=stereo[a]",
        *("-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast"),
        *("-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "160k", str(path)),
    )


# --- raw ffmpeg equivalents (what someone would run by hand) -----------------------


def raw_vertical(src: Path, out: Path, _: dict[str, Any]) -> None:
    vf = "fps=30,scale=1080:1920:force_original_aspect_ratio=increase,crop=1080:1920,setsar=1"
    ffmpeg("-i", str(src), "-vf", f"{vf},format=yuv420p", *X264,
           *("-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2"),
           "-movflags", "+faststart", str(out / "vertical.mp4"))  # fmt: skip


def raw_proxy(src: Path, out: Path, _: dict[str, Any], seconds: int) -> None:
    graph = (
        "[0:v]scale=1280:720,setsar=1,format=yuv420p,split[p][q];"
        f"[q]fps={30 / seconds:.6f},thumbnail=n=30[poster];"
        "[0:a]aformat=channel_layouts=mono,showwavespic=s=1800x280[wave]"
    )
    ffmpeg("-i", str(src), "-filter_complex", graph,
           "-map", "[p]", "-map", "0:a", *X264, "-c:a", "aac", "-b:a", "128k",
           "-movflags", "+faststart", str(out / "proxy.mp4"),
           "-map", "[poster]", "-frames:v", "1", "-update", "1", str(out / "poster.jpg"),
           "-map", "[wave]", "-frames:v", "1", "-update", "1",
           str(out / "waveform.png"))  # fmt: skip


def raw_frames(src: Path, out: Path, _: dict[str, Any]) -> None:
    ffmpeg("-i", str(src), "-vf", "fps=1:round=up", "-q:v", "3", "-start_number", "1",
           str(out / "frame-%06d.jpg"))  # fmt: skip
    ffmpeg("-framerate", "1", "-i", str(out / "frame-%06d.jpg"), "-vf",
           "scale=320:180,tile=6x8:padding=4:margin=4", "-frames:v", "1", "-update", "1",
           str(out / "contact-sheet.jpg"))  # fmt: skip


def raw_highlights(src: Path, out: Path, doc: dict[str, Any]) -> None:
    # Analysis decode (audio PCM + small grey frames), then the same reel cut.
    ffmpeg("-i", str(src), "-map", "0:a", "-ac", "1", "-ar", "16000", "-f", "f32le",
           str(out / "a.f32"), "-map", "0:v", "-vf", "fps=4,scale=64:36,format=gray",
           "-f", "rawvideo", str(out / "v.gray"))  # fmt: skip
    segments = doc["reel"]["segments"]
    args: list[str] = []
    parts = []
    for i, (start, end) in enumerate(segments):
        args += ["-ss", f"{start:.3f}", "-t", f"{end - start:.3f}", "-i", str(src)]
        parts.append(f"[{i}:v]scale=1920:1080,setsar=1,format=yuv420p[v{i}];"
                     f"[{i}:a]aresample=48000,aformat=channel_layouts=stereo[a{i}]")  # fmt: skip
    chain = "".join(f"[v{i}][a{i}]" for i in range(len(segments)))
    graph = ";".join(parts) + f";{chain}concat=n={len(segments)}:v=1:a=1[v][a]"
    ffmpeg(*args, "-filter_complex", graph, "-map", "[v]", "-map", "[a]", *X264,
           "-c:a", "aac", "-b:a", "160k", "-movflags", "+faststart",
           str(out / "highlights.mp4"))  # fmt: skip


# --- the pipeline -------------------------------------------------------------------


async def pipeline_once(root: Path, route: str, src: Path, device: str) -> dict[str, Any]:
    """Drop the input, tick, run the one job; seconds from tick start to manifest."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "inputs" / route).mkdir(parents=True)
    shutil.copyfile(src, root / "inputs" / route / src.name)
    config = build_config(
        {"routes": {route: {"handler": HANDLERS[route], "settle_seconds": 0}}}, source="bench"
    )
    async with LocalFolderBucket(root) as bucket:
        runner = JobRunner(
            bucket, scratch_root=root.parent / "scratch", device=DeviceInfo(device), worker_name="b"
        )
        claimed: list[Any] = []
        started = time.perf_counter()
        await run_tick(bucket, config, claimed.append)
        outcomes = [await runner.run(spec) for spec in claimed]
        elapsed = time.perf_counter() - started
        manifest_key = f"outputs/{route}/{src.name}/manifest.json"
        manifest = json.loads(await bucket.get_bytes(manifest_key))
    assert [o.status for o in outcomes] == ["succeeded"], outcomes
    return {"seconds": elapsed, "manifest": manifest, "root": root}


def run_raw(route: str, src: Path, out: Path, doc: dict[str, Any], seconds: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    if route == "proxy":
        raw_proxy(src, out, doc, seconds)
    else:
        {"vertical": raw_vertical, "frames": raw_frames, "highlights": raw_highlights}[route](
            src, out, doc
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--routes", nargs="+", default=list(HANDLERS), choices=list(HANDLERS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/media_cpu.json")
    args = parser.parse_args()
    configure_logging(level="WARNING")

    work = Path(tempfile.mkdtemp(prefix="dropgpu-bench-media-"))
    try:
        src = work / "match.mp4"
        t0 = time.perf_counter()
        make_input(src, args.seconds)
        print(
            f"input: {args.seconds} s 1920x1080 30 fps ({time.perf_counter() - t0:.1f} s to make)"
        )
        results: dict[str, Any] = {}
        for route in args.routes:
            raw_s: list[float] = []
            pipe_s: list[float] = []
            manifest: dict[str, Any] = {}
            for _ in range(args.repeat):
                res = asyncio.run(pipeline_once(work / "bucket", route, src, args.device))
                pipe_s.append(res["seconds"])
                manifest = res["manifest"]
                doc: dict[str, Any] = {}
                if route == "highlights":
                    key = next(o["key"] for o in manifest["outputs"] if o["role"] == "highlights")
                    doc = json.loads((work / "bucket" / key).read_text())
                raw_s.append(run_raw(route, src, work / "raw", doc, args.seconds))
            ratio = min(pipe_s) / min(raw_s)
            t = manifest["timings"]
            results[route] = {
                "raw_s": [round(x, 3) for x in raw_s],
                "pipeline_s": [round(x, 3) for x in pipe_s],
                "ratio": round(ratio, 3),
                "overhead_pct": round((ratio - 1) * 100, 1),
                "target_ratio": TARGETS.get(route),
                "meets_target": None if route not in TARGETS else ratio <= TARGETS[route],
                "pipeline_phases_s": {k: t.get(k) for k in PHASES},
                "outputs": len(manifest["outputs"]),
                "video_encoder": manifest["runtime"].get("video_encoder"),
            }
            r = results[route]
            print(f"{route:11s} raw {min(raw_s):7.2f} s  pipeline {min(pipe_s):7.2f} s  "
                  f"ratio {ratio:5.3f}  ({r['overhead_pct']:+.1f}%)"
                  + (f"  target <= {TARGETS[route]}" if route in TARGETS else ""))  # fmt: skip
        report = {
            "bench": "media_cpu",
            "input": {"seconds": args.seconds, "size": "1920x1080", "fps": 30},
            "device": args.device,
            "repeat": args.repeat,
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ffmpeg": ffmpeg_version(),
            "note": (
                "CPU only (libx264), no GPU here: NVENC figures not measured. The machine's "
                "cores were shared with other work while this ran; raw and pipeline runs "
                "alternate so both see the same load. Raw commands are hand-written ffmpeg "
                "equivalents producing the same media outputs (proxy's raw waveform uses "
                "showwavespic and has no peaks JSON; highlights' raw has no scoring)."
            ),
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
