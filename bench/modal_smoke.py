"""Smoke test of a real Modal deployment (needs a Modal token; about two minutes).

    python bench/modal_smoke.py                         # GPU probes only (ephemeral app)
    python bench/modal_smoke.py --bucket s3://my-media --endpoint-url https://...
                                                        # + one job per image kind, end to end

1. Probes, in each GPU image (ffmpeg, torch) on the GPU its routes use: the NVIDIA
   driver (nvidia-smi), the device dropgpu selects, whether NVENC encodes, NVDEC decodes
   and scale_cuda scales (gpu/encoders.py's probes), and whether CUDA torch loads.
   These run in a short-lived app built from the deployed images; nothing is deployed.
2. With --bucket (the uploader's credentials in AWS_* env): drops a 2 s clip under
   inputs/<video route>/ and a 2 s tone under inputs/<audio route>/ (skip: --no-audio;
   the stems route needs `pull_models` first), asks the *deployed* app for one tick
   (as `dropgpu deploy --tick-now`), and waits for both manifests; prints their status,
   runtime.device, gpu_name and video_encoder.

A good result: "nvenc": "ok" and "cuda_decode": "ok" on L4/A10G (A100/H100 have no
NVENC: libx264 there is expected), "torch_cuda": true in the torch image, and
manifests with "status": "succeeded" and "device": "cuda:0". JSON lands in
bench/results/modal_smoke.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import modal  # noqa: E402

from infra.deploy import modal_app as deployed  # noqa: E402

probe_app = modal.App("dropgpu-smoke")


def _probe() -> dict[str, Any]:
    """What a worker container sees (runs inside the image)."""
    from gpu.device import nvidia_smi_gpus, select_device
    from gpu.encoders import choose_video_encoder

    out: dict[str, Any] = {"nvidia_smi": nvidia_smi_gpus()}
    device = select_device()
    out["device"] = {"name": device.name, "gpu": device.gpu_name, "reason": device.reason}
    choice = choose_video_encoder(device.name)
    out["encoder"] = choice.as_runtime()
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda_build"] = torch.version.cuda
        out["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        out["torch"] = None
    ldconfig = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False)
    # The driver's NVENC library, mounted only with the "video" driver capability.
    out["libnvidia_encode"] = "libnvidia-encode" in ldconfig.stdout
    return out


def _gpu_for(image: str) -> str:
    gpus = [ws.gpu for ws in deployed.SETTINGS.workers.values() if ws.image == image and ws.gpu]
    return gpus[0] if gpus else "L4"


probe_ffmpeg = probe_app.function(image=deployed.IMAGES["ffmpeg"], gpu=_gpu_for("ffmpeg"))(_probe)
probe_torch = probe_app.function(
    image=deployed.IMAGES["torch"], gpu=_gpu_for("torch"), name="_probe_torch"
)(_probe)


def run_probes() -> dict[str, Any]:
    with modal.enable_output(), probe_app.run():
        return {"ffmpeg": probe_ffmpeg.remote(), "torch": probe_torch.remote()}


def _media(tmp: Path) -> tuple[Path, Path]:
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    clip, tone = tmp / "smoke.mp4", tmp / "smoke.wav"
    subprocess.run(
        [exe, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:d=2",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-shortest",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(clip)],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [exe, "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=2",
         "-ac", "2", "-ar", "44100", str(tone)],
        check=True,
    )  # fmt: skip
    return clip, tone


async def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    from handlers.contract.keys import JobRef
    from infra.storage.url import open_bucket

    stamp = time.strftime("%Y%m%dT%H%M%S")
    drops: list[tuple[str, str]] = [(args.video_route, f"smoke-{stamp}.mp4")]
    if not args.no_audio:
        drops.append((args.audio_route, f"smoke-{stamp}.wav"))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip, tone = _media(Path(tmp))
        async with open_bucket(args.bucket, endpoint_url=args.endpoint_url) as bucket:
            for route, rel in drops:
                data = (clip if rel.endswith(".mp4") else tone).read_bytes()
                await bucket.put_bytes(f"inputs/{route}/{rel}", data)
            await asyncio.sleep(max(r.settle_seconds for r in _routes(drops)) + 1)
            tick = modal.Function.from_name(deployed.SETTINGS.app_name, "watch_tick")
            results["tick"] = await asyncio.to_thread(tick.remote)
            deadline = time.monotonic() + args.wait
            for route, rel in drops:
                listing = await bucket.list(f"inputs/{route}/{rel}")
                ref = JobRef(route, rel, listing.objects[0].etag)
                manifest = None
                while manifest is None and time.monotonic() < deadline:
                    try:
                        manifest = json.loads(await bucket.get_bytes(ref.manifest_key))
                    except Exception:
                        await asyncio.sleep(5)
                rt = (manifest or {}).get("runtime", {})
                results[route] = {
                    "status": (manifest or {}).get("status", "no manifest in time"),
                    "device": rt.get("device"),
                    "gpu_name": rt.get("gpu_name"),
                    "video_encoder": rt.get("video_encoder"),
                    "encoder_reason": rt.get("encoder_reason"),
                    "gpu_seconds": rt.get("gpu_seconds"),
                }
    return results


def _routes(drops: list[tuple[str, str]]) -> list[Any]:
    return [deployed.RUN_CONFIG.routes[route] for route, _ in drops]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bucket", help="s3://bucket of the deployment (enables the e2e jobs)")
    p.add_argument("--endpoint-url", default=None)
    p.add_argument("--video-route", default="vertical")
    p.add_argument("--audio-route", default="stems")
    p.add_argument("--no-audio", action="store_true", help="skip the torch-image job")
    p.add_argument("--wait", type=float, default=300.0, help="seconds to wait for manifests")
    args = p.parse_args()

    report: dict[str, Any] = {"probes": run_probes()}
    if args.bucket:
        report["jobs"] = asyncio.run(end_to_end(args))
    text = json.dumps(report, indent=2, default=str)
    print(text)
    out = ROOT / "bench" / "results" / "modal_smoke.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
