"""Which device a worker runs on, decided once per worker process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    name: str  # "cuda:0" or "cpu"
    gpu_name: str | None = None
    reason: str = ""


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
    try:
        import torch
    except ImportError:
        return DeviceInfo("cpu", reason="torch is not installed")
    if not torch.cuda.is_available():
        return DeviceInfo("cpu", reason="torch.cuda.is_available() is False")
    index = int(preference.split(":", 1)[1]) if preference.startswith("cuda:") else 0
    if index >= torch.cuda.device_count():
        return DeviceInfo("cpu", reason=f"cuda:{index} does not exist")
    return DeviceInfo(
        f"cuda:{index}", gpu_name=torch.cuda.get_device_name(index), reason="CUDA available"
    )
