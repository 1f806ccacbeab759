"""What the images and classes give a worker: pinned deps, the driver's video libraries,
real CPU/memory reservations, one watcher at a time, and a device without torch.

Definitions are read through tests/test_modal_app.py's ``options`` (Modal 1.6.x's loader
closure; pyproject pins modal to that range for this reason).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpu.device import select_device
from infra.deploy.settings import IMAGES, RESOURCES
from tests.test_modal_app import import_app, options, write_config

PIN = re.compile(r"^[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.+]*$")


def test_every_image_dependency_is_pinned() -> None:
    for recipe in IMAGES.values():
        unpinned = [p for p in recipe.pip if not PIN.fullmatch(p)]
        assert unpinned == [], (recipe.name, unpinned)


def test_gpu_images_ask_for_the_drivers_video_libraries() -> None:
    for name in ("ffmpeg", "torch"):
        caps = IMAGES[name].env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
        assert {"compute", "utility", "video"} <= set(caps), name
    assert "NVIDIA_DRIVER_CAPABILITIES" not in IMAGES["watcher"].env


def test_workers_reserve_cpu_and_memory_and_the_watcher_runs_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    m = import_app(monkeypatch, write_config(tmp_path))
    watcher = options(m.watch_tick)
    assert watcher["max_containers"] == 1
    assert watcher["_spec"].cpu == 1.0
    for ws in m.SETTINGS.workers.values():
        spec = options(m.WORKERS[ws.route])["_spec"]
        assert spec.cpu == ws.cpu >= 2.0, ws.route  # not Modal's 0.125-core default
        assert spec.memory == ws.memory >= 4_096, ws.route
        assert (ws.cpu, ws.memory) == RESOURCES[ws.image], ws.route


def test_device_found_by_nvidia_smi_when_torch_is_absent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The ffmpeg image has no torch: NVML's CLI names the GPU and the driver. A stand-in
    # nvidia-smi prints what the real one prints for --query-gpu=name,driver_version.
    from gpu.device import _device_without_torch

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA L4, 580.95.05'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    device = _device_without_torch(0)
    assert (device.name, device.gpu_name, device.driver_version) == (
        "cuda:0",
        "NVIDIA L4",
        "580.95.05",
    )
    assert _device_without_torch(1).name == "cpu"


def test_device_without_torch_reports_why_it_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine has no NVIDIA driver: the reason says so, whichever path it took.
    select_device.cache_clear()
    monkeypatch.setenv("DROPGPU_DEVICE", "auto")
    device = select_device()
    select_device.cache_clear()
    if device.name == "cpu":
        assert device.reason
    else:  # a GPU machine: found by torch or nvidia-smi, with its name
        assert device.gpu_name


def test_containers_record_the_deployed_version_and_mount_models_read_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from infra.version import VERSION_ENV, dropgpu_version

    m = import_app(monkeypatch, write_config(tmp_path))
    assert m.dropgpu_version() == dropgpu_version()
    dropgpu_version.cache_clear()
    monkeypatch.setenv(VERSION_ENV, "1.2.3")
    assert dropgpu_version() == "1.2.3"
    dropgpu_version.cache_clear()
    for ws in m.SETTINGS.workers.values():
        (volume,) = options(m.WORKERS[ws.route])["_spec"].volumes.values()
        assert volume._read_only, ws.route


def test_gpu_counts_follow_modals_per_type_caps() -> None:
    from infra.pricing import parse_gpu

    assert parse_gpu("h100:8") == ("H100", 8)
    assert parse_gpu("A10G:4") == ("A10G", 4)
    with pytest.raises(ValueError, match="1 to 4 A10G"):
        parse_gpu("A10G:8")
