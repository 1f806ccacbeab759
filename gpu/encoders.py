"""Pick the H.264 encoder (and CUDA decode) by probing what actually works.

GPU names say nothing reliable: A100 and H100 have NVDEC but no NVENC, a
container may lack the driver's video libraries (libnvidia-encode), and a distro
ffmpeg may be built without NVENC. So each path is proven with a tiny real run
of the ffmpeg binary dropgpu uses, once per process, and the choice records why.

``DROPGPU_VIDEO_ENCODER=libx264|h264_nvenc`` forces the encoder (a forced NVENC
that fails its probe falls back to libx264, saying so in ``reason``);
``DROPGPU_HWACCEL=none`` turns off CUDA decoding.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gpu.ffmpeg_binary import ffmpeg_exe

log = structlog.get_logger(__name__)

LIBX264 = "libx264"
NVENC = "h264_nvenc"
ENCODERS = (LIBX264, NVENC)

# Default quality on each encoder's own scale: CRF 20 and CQ 21 look alike.
DEFAULT_QUALITY = {LIBX264: 20, NVENC: 21}
LOSSLESS_PROFILE = "high444"
# A cold CUDA context can take a few seconds; a wedged driver must not hang a worker.
PROBE_TIMEOUT_S = 20.0
_CONTEXT = re.compile(r"^\s*(\[[^\]]*\]\s*)+")


@dataclass(frozen=True)
class VideoEncoderChoice:
    codec: str  # "libx264" or "h264_nvenc"
    hwaccel: str | None  # "cuda" when NVDEC decoding was proven to work, else None
    args: list[str]  # output options: codec, quality, pixel format
    reason: str  # why this codec (and hwaccel) was chosen, for the manifest/logs
    gpu_index: int | None = None  # which GPU the hardware paths use
    scale_cuda: bool = False  # GPU scaling proven (informational; filters run on CPU)
    probes: dict[str, str] = field(default_factory=dict)  # probe name -> "ok" / error

    def codec_args(self, quality: int | None = None) -> list[str]:
        """Output options, with ``quality`` (CRF for x264, CQ for NVENC) overriding the default."""
        return encoder_args(self.codec, quality, self.gpu_index)

    def input_args(self) -> list[str]:
        """Input options for hardware decoding (put before ``-i``); empty on CPU.

        Without ``-hwaccel_output_format`` decoded frames come back to system
        memory, so the CPU filter graph is unchanged, and codecs NVDEC lacks
        (VP8, ProRes, ...) decode in software.
        """
        if self.hwaccel != "cuda":
            return []
        return ["-hwaccel", "cuda", "-hwaccel_device", str(self.gpu_index or 0)]

    def as_runtime(self) -> dict[str, object]:
        return {
            "video_encoder": self.codec,
            "hwaccel": self.hwaccel,
            "encoder_reason": self.reason,
            "scale_cuda": self.scale_cuda,
        }


def encoder_args(codec: str, quality: int | None = None, gpu_index: int | None = None) -> list[str]:
    q = DEFAULT_QUALITY[codec] if quality is None else quality
    if codec == LIBX264:
        # CRF 0 is lossless, which H.264 allows only in High 4:4:4 Predictive (libx264
        # refuses "high" with it); the output stays yuv420p. Many hardware players
        # and browsers cannot play that profile: quality 0 is for archives.
        profile = LOSSLESS_PROFILE if q == 0 else "high"
        return [
            *("-c:v", LIBX264, "-preset", "veryfast", "-crf", str(q)),
            *("-pix_fmt", "yuv420p", "-profile:v", profile),
        ]
    if codec == NVENC:
        # -b:v 0 lets -cq drive quality (VBR with a target quality, no bitrate cap).
        return [
            *("-c:v", NVENC, "-gpu", str(gpu_index or 0), "-preset", "p5", "-tune", "hq"),
            *("-rc", "vbr", "-cq", str(q), "-b:v", "0"),
            *("-pix_fmt", "yuv420p", "-profile:v", "high"),
        ]
    raise ValueError(f"unknown video encoder {codec!r}; expected one of {ENCODERS}")


def _gpu_index(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    _, _, idx = device.partition(":")
    return int(idx) if idx.isdigit() else 0


def _run_probe(argv: list[str], timeout: float) -> str:
    """Run one probe command; ``"ok"`` or a one-line reason it failed."""
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    except OSError as exc:
        return f"could not run ffmpeg: {exc}"
    if proc.returncode == 0:
        return "ok"
    text = proc.stderr.decode("utf-8", "replace")
    # "[h264_nvenc @ 0x55d...] Cannot load libcuda.so.1" -> "Cannot load libcuda.so.1"
    lines = [_CONTEXT.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    # The first error line names the cause ("Cannot load libcuda.so.1",
    # "No capable devices found"); later ones are consequences.
    return (lines[0] if lines else f"exit {proc.returncode}")[:300]


def _base(exe: str) -> list[str]:
    return [exe, "-hide_banner", "-nostdin", "-loglevel", "error"]


def probe_nvenc(exe: str, gpu_index: int, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Encode 0.1 s of colour with the exact NVENC options dropgpu uses."""
    return _run_probe(
        [
            *_base(exe),
            *("-f", "lavfi", "-i", "color=size=256x256:rate=30:duration=0.1"),
            *encoder_args(NVENC, None, gpu_index),
            *("-f", "null", "-"),
        ],
        timeout,
    )


def probe_scale_cuda(exe: str, gpu_index: int, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Upload frames to the GPU, scale them there and encode with NVENC."""
    return _run_probe(
        [
            *_base(exe),
            *("-init_hw_device", f"cuda=gpu:{gpu_index}", "-filter_hw_device", "gpu"),
            *("-f", "lavfi", "-i", "color=size=256x256:rate=30:duration=0.1"),
            *("-vf", "format=nv12,hwupload,scale_cuda=128:128"),
            *("-c:v", NVENC, "-gpu", str(gpu_index), "-f", "null", "-"),
        ],
        timeout,
    )


def probe_cuda_decode(exe: str, gpu_index: int, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Decode a tiny H.264 file with NVDEC (present on A100/H100, which lack NVENC)."""
    with tempfile.TemporaryDirectory(prefix="dropgpu-probe-") as tmp:
        sample = Path(tmp) / "sample.mp4"
        made = _run_probe(
            [
                *_base(exe),
                *("-f", "lavfi", "-i", "testsrc2=size=256x256:rate=30:duration=0.2"),
                *("-c:v", LIBX264, "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
                f"file:{sample}",
            ],
            timeout,
        )
        if made != "ok":
            return f"could not make a sample to decode: {made}"
        return _run_probe(
            [
                *_base(exe),
                *("-hwaccel", "cuda", "-hwaccel_device", str(gpu_index)),
                *("-hwaccel_output_format", "cuda"),  # fail instead of silently using the CPU
                *("-protocol_whitelist", "file", "-i", f"file:{sample}"),
                *("-f", "null", "-"),
            ],
            timeout,
        )


_lock = threading.Lock()
_cache: dict[tuple[str, str, str, str], VideoEncoderChoice] = {}


def choose_video_encoder(device: str = "cuda:0") -> VideoEncoderChoice:
    """The encoder for H.264 output on ``device`` ("cpu" or "cuda:N"), probed once per process."""
    forced = os.environ.get("DROPGPU_VIDEO_ENCODER", "").strip().lower()
    hwaccel_env = os.environ.get("DROPGPU_HWACCEL", "").strip().lower()
    exe = ffmpeg_exe()
    key = (exe, device, forced, hwaccel_env)
    with _lock:  # one probe at a time; concurrent jobs wait for the first result
        choice = _cache.get(key)
        if choice is None:
            choice = _choose(exe, device, forced, hwaccel_env)
            _cache[key] = choice
            log.info(
                "video_encoder_chosen",
                codec=choice.codec,
                hwaccel=choice.hwaccel,
                reason=choice.reason,
                device=device,
            )
        return choice


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _choose(exe: str, device: str, forced: str, hwaccel_env: str) -> VideoEncoderChoice:
    if forced and forced not in ENCODERS:
        log.warning("unknown_forced_encoder", value=forced, expected=ENCODERS)
        forced = ""
    gpu_index = _gpu_index(device)
    if gpu_index is None and forced == NVENC:
        gpu_index = 0  # forcing NVENC on a "cpu" job means: try the first GPU
    if gpu_index is None:
        return VideoEncoderChoice(
            LIBX264, None, encoder_args(LIBX264), "job device is cpu: libx264", None
        )

    probes: dict[str, str] = {}
    if forced != LIBX264:
        probes["h264_nvenc"] = probe_nvenc(exe, gpu_index)
    nvenc_ok = probes.get("h264_nvenc") == "ok"
    if nvenc_ok:
        probes["scale_cuda"] = probe_scale_cuda(exe, gpu_index)
    # Decoding is probed even when libx264 is forced: NVDEC still spares the CPU.
    hwaccel: str | None = None
    if hwaccel_env in ("none", "0", "off", "false", "no"):
        probes["cuda_decode"] = "disabled by DROPGPU_HWACCEL"
    elif device.startswith("cuda"):
        probes["cuda_decode"] = probe_cuda_decode(exe, gpu_index)
        hwaccel = "cuda" if probes["cuda_decode"] == "ok" else None

    if forced == LIBX264:
        codec, reason = LIBX264, "forced by DROPGPU_VIDEO_ENCODER=libx264"
    elif nvenc_ok:
        codec = NVENC
        reason = (
            "forced by DROPGPU_VIDEO_ENCODER=h264_nvenc; probe encode succeeded"
            if forced == NVENC
            else f"h264_nvenc probe encode succeeded on cuda:{gpu_index}"
        )
    else:
        codec = LIBX264
        why = probes.get("h264_nvenc", "not probed")
        reason = (
            f"DROPGPU_VIDEO_ENCODER=h264_nvenc forced but the NVENC probe failed ({why}); "
            "falling back to libx264"
            if forced == NVENC
            else f"h264_nvenc probe failed ({why}): libx264"
        )
    if hwaccel:
        reason += "; NVDEC (cuda) decoding works"
    return VideoEncoderChoice(
        codec=codec,
        hwaccel=hwaccel,
        args=encoder_args(codec, None, gpu_index),
        reason=reason,
        gpu_index=gpu_index,
        scale_cuda=probes.get("scale_cuda") == "ok",
        probes=probes,
    )
