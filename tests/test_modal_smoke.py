"""bench/modal_smoke.py offline: it imports with no token, its probe runs in-process
(here: no GPU, so the CPU answers with reasons), and `dropgpu deploy --tick-now` without
a token stops with one line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from watcher.cli import main; sys.exit(main())"


def test_smoke_script_probe_runs_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DROPGPU_CONFIG", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    spec = importlib.util.spec_from_file_location("modal_smoke", ROOT / "bench/modal_smoke.py")
    assert spec and spec.loader
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    result = smoke.probe_ffmpeg.local()
    assert result["device"]["name"] in ("cpu", "cuda:0")
    assert result["device"]["reason"]
    assert result["encoder"]["video_encoder"] in ("libx264", "h264_nvenc")
    assert "libnvidia_encode" in result


def test_tick_now_without_a_token_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "DROPGPU_"))}
    env |= {"PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}  # no ~/.modal.toml
    done = subprocess.run(
        [sys.executable, "-c", CLI, "deploy", "--tick-now"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "dropgpu: no Modal token found: run `modal token new`"
    ]
