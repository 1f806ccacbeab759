"""Which device a worker runs on, decided once per worker process."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import structlog
from structlog.typing import FilteringBoundLogger

log: FilteringBoundLogger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    name: str  # "cuda:0" or "cpu"
    gpu_name: str | None = None
    reason: str = ""
    driver_version: str | None = None  # NVIDIA driver, when nvidia-smi answered


def nvidia_smi_gpus(timeout: float = 10.0) -> list[tuple[str, str]]:
    """(name, driver version) of each GPU nvidia-smi (NVML) sees; [] when it cannot answer.

    Needs no torch: the ffmpeg-only images (NVENC/NVDEC) decide their device with it.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia_smi_failed", error=str(exc).splitlines()[0] if str(exc) else "")
        return []
    gpus = []
    for line in out.splitlines():
        name, _, driver = line.partition(",")
        if name.strip():
            gpus.append((name.strip(), driver.strip()))
    return gpus


def _device_without_torch(index: int) -> DeviceInfo:
    gpus = nvidia_smi_gpus()
    if not gpus:
        return DeviceInfo("cpu", reason="torch is not installed and nvidia-smi found no GPU")
    if index >= len(gpus):
        return DeviceInfo("cpu", reason=f"cuda:{index} does not exist")
    name, driver = gpus[index]
    return DeviceInfo(
        f"cuda:{index}",
        gpu_name=name,
        reason="GPU found by nvidia-smi (no torch: ffmpeg's NVENC/NVDEC use it)",
        driver_version=driver or None,
    )


def nvidia_driver_present() -> bool:
    # Cheap check that avoids importing torch (seconds) on machines with no GPU.
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()


@cache
def select_device(preference: str | None = None) -> DeviceInfo:
    """``preference``: "cpu", "cuda", "cuda:N" or None/"auto" (env DROPGPU_DEVICE)."""
    preference = (preference or os.environ.get("DROPGPU_DEVICE") or "auto").lower()
    if preference == "cpu":
        return DeviceInfo("cpu", reason="forced by DROPGPU_DEVICE/--device")
    if preference == "auto" and not nvidia_driver_present():
        return DeviceInfo("cpu", reason="no NVIDIA driver found")
    index = int(preference.split(":", 1)[1]) if preference.startswith("cuda:") else 0
    try:
        import torch
    except ImportError:
        return _logged(_device_without_torch(index))
    if not torch.cuda.is_available():
        # Say why: a driver older than the wheel's CUDA build is the usual cause.
        smi = nvidia_smi_gpus()
        driver = f" (driver {smi[0][1]}, torch built for CUDA {torch.version.cuda})" if smi else ""
        return _logged(DeviceInfo("cpu", reason=f"torch.cuda.is_available() is False{driver}"))
    if index >= torch.cuda.device_count():
        return _logged(DeviceInfo("cpu", reason=f"cuda:{index} does not exist"))
    smi = nvidia_smi_gpus()
    return _logged(
        DeviceInfo(
            f"cuda:{index}",
            gpu_name=torch.cuda.get_device_name(index),
            reason="CUDA available",
            driver_version=smi[index][1] if index < len(smi) else None,
        )
    )


def _logged(device: DeviceInfo) -> DeviceInfo:
    # Once per process (select_device is cached): why a GPU worker may run on the CPU.
    log.info(
        "device_selected",
        device=device.name,
        gpu_name=device.gpu_name,
        driver=device.driver_version,
        reason=device.reason,
    )
    return device
