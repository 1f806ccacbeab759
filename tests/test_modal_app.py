"""The Modal app, offline: definitions, and the watcher + worker run in-process.

No network and no Modal account: the app module is imported with no token,
``watch_tick.local(spawn=...)`` runs a real tick against SeaweedFS with the
spawn captured, and ``Worker_<route>().run_job.local(spec)`` runs the job as a
container would (``@modal.enter`` included), end to end to a manifest.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from modal._utils.async_utils import synchronizer

from infra.deploy.settings import (
    IMAGES,
    REQUIRED_SECRET_KEYS,
    deploy_settings,
    route_gpu,
    route_image,
    worker_class_name,
)
from infra.pricing import DEFAULT_GPU_USD_PER_SECOND
from tests.conftest import BucketSpec
from tests.handlers_for_tests import executions
from tests.pipeline_helpers import COUNTING, REPO, put_bytes, read_manifest
from watcher.config import RouteConfig, build_config, load_config
from watcher.exceptions import ConfigError
from watcher.status import collect_status, format_status

pytestmark = pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning")


def write_config(tmp_path: Path, extra: str = "", *, count_route: str = "") -> Path:
    counter = tmp_path / "counter"
    path = tmp_path / "dropgpu.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [watch]
            scratch_dir = "{tmp_path / "scratch"}"
            backoff_base_seconds = 0
            backoff_max_seconds = 0

            [routes.count]
            handler = "{COUNTING}"
            params = {{ counter_dir = "{counter}" }}
            settle_seconds = 0
            gpu = "T4"
            max_containers = 2
            scaledown_window_seconds = 30
            timeout_seconds = 600
            {count_route}

            [routes.clips-hd]
            handler = "vertical"
            gpu = "A100-80GB"
            """
        )
        + textwrap.dedent(extra)
    )
    return path


def import_app(monkeypatch: pytest.MonkeyPatch, config: Path) -> ModuleType:
    """A fresh import of infra.deploy.modal_app with ``config``, no Modal token in sight."""
    monkeypatch.setenv("DROPGPU_CONFIG", str(config))
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    sys.modules.pop("infra.deploy.modal_app", None)
    return importlib.import_module("infra.deploy.modal_app")


def impl(modal_obj: Any) -> Any:
    """Modal's implementation object behind a public (synchronicity-wrapped) one."""
    return synchronizer._translate_in(modal_obj)


def options(modal_obj: Any) -> dict[str, Any]:
    """What Modal 1.6.4 was given for a Function or Cls, read from its loader closure.

    Modal exposes image/gpu/secrets/volumes on ``_spec`` but keeps the rest
    (schedule, timeout, retries, max_containers) in the closure that builds the
    function definition at deploy time.
    """
    obj = impl(modal_obj)
    fn = getattr(obj, "_class_service_function", None) or obj
    load = fn._load
    cells = dict(zip(load.__code__.co_freevars, load.__closure__ or (), strict=True))
    return {"_spec": fn._spec} | {k: c.cell_contents for k, c in cells.items()}


# -- definitions ----------------------------------------------------------------------------


def test_import_offline_without_token_and_without_torch(tmp_path: Path) -> None:
    # A fresh interpreter, no token, torch made unimportable: the watcher's container
    # (slim image) must be able to import the app and build every route's job spec.
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "torchaudio", "demucs"}:
                    raise ImportError(f"{name} is not in the watcher image")
        sys.meta_path.insert(0, NoTorch())
        import infra.deploy.modal_app as m
        for route in m.RUN_CONFIG.enabled_routes():
            route.accepted_extensions(), route.validated_params()
        print(json.dumps(sorted(m.WORKERS)))
        """
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MODAL_CONFIG_PATH": str(tmp_path / "no-modal.toml"),
        "PYTHONPATH": str(REPO),
        "DROPGPU_CONFIG": str(write_config(tmp_path)),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "count" in json.loads(proc.stdout.strip().splitlines()[-1])


def test_schedule_images_secrets_volumes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m = import_app(monkeypatch, write_config(tmp_path))
    watcher = options(m.watch_tick)
    assert watcher["schedule"].proto_message.cron.cron_string == "* * * * *"
    assert watcher["retry_policy"].retries == 0
    assert watcher["_spec"].gpus is None
    assert watcher["_spec"].image is impl(m.IMAGES["watcher"])
    # Slim watcher image: no torch or demucs; GPU images have what handlers need.
    slim = " ".join(IMAGES["watcher"].pip)
    assert "torch" not in slim and "demucs" not in slim and "imageio-ffmpeg" not in slim
    assert any(p.startswith("torch==") for p in IMAGES["torch"].pip)
    assert any(p.startswith("demucs==") for p in IMAGES["torch"].pip)
    assert any(p.startswith("imageio-ffmpeg") for p in IMAGES["ffmpeg"].pip)
    assert IMAGES["torch"].env["DROPGPU_MODEL_DIR"].startswith("/models")

    (secret,) = watcher["_spec"].secrets
    assert secret is impl(m.BUCKET_SECRET)
    assert set(REQUIRED_SECRET_KEYS) == {
        "DROPGPU_BUCKET",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
    }
    assert "dropgpu-bucket" in repr(m.BUCKET_SECRET)

    pull = options(m.pull_models)
    assert set(pull["_spec"].volumes) == {"/models"}
    assert pull["_spec"].image is impl(m.IMAGES["torch"])


def test_worker_class_per_route_honours_gpu_caps_and_timeouts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    m = import_app(monkeypatch, write_config(tmp_path))
    assert set(m.WORKERS) == {r.name for r in m.CONFIG.enabled_routes()}
    expected = {
        "count": ("T4", 2, 30, 600 + 30 + 600, "torch"),  # custom handler: full image
        "clips-hd": ("A100-80GB", 2, 120, 3600 + 30 + 600, "ffmpeg"),
        "vertical": ("L4", 2, 120, 3600 + 30 + 600, "ffmpeg"),  # video default: NVENC L4
    }
    for route, (gpu, cap, scaledown, timeout, image) in expected.items():
        cls = getattr(m, worker_class_name(route))
        assert cls is m.WORKERS[route]
        opts = options(cls)
        assert opts["_spec"].gpus == gpu
        assert opts["max_containers"] == cap
        assert opts["scaledown_window"] == scaledown
        assert opts["timeout"] == timeout
        assert opts["startup_timeout"] == 300  # half the 600 s Modal lease
        assert opts["retry_policy"].retries == 0  # dropgpu attempts are the only retries
        assert opts["_spec"].image is impl(m.IMAGES[image])
        assert set(opts["_spec"].volumes) == {"/models"}
        assert len(opts["_spec"].secrets) == 1
    assert m.RUN_CONFIG.watch.lease_ttl_seconds == 600
    assert m.RUN_CONFIG.watch.heartbeat_seconds == 150


def test_period_schedule_and_stems_default_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    m = import_app(monkeypatch, write_config(tmp_path, "\n[modal]\nperiod_seconds = 20\n"))
    assert options(m.watch_tick)["schedule"].proto_message.period.seconds == 20
    config = load_config(write_config(tmp_path))
    stems = RouteConfig(name="stems", handler="stems")
    assert route_gpu(config, stems) == "A10G"
    assert route_gpu(config, RouteConfig(name="cpu", handler="vertical", gpu="none")) is None


def test_image_and_gpu_come_from_the_handler_unless_the_route_says(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    stems = RouteConfig(name="stems", handler="stems")
    assert (route_image(stems), route_gpu(config, stems)) == ("torch", "A10G")
    # "module:Attr" naming a built-in class: its declaration counts, not the spelling.
    same = RouteConfig(name="s2", handler="handlers.stems:StemsHandler")
    assert (route_image(same), route_gpu(config, same)) == ("torch", "A10G")
    vertical = RouteConfig(name="v", handler="vertical", modal_image="torch")
    assert (route_image(vertical), route_gpu(config, vertical)) == ("torch", "L4")
    cpu = RouteConfig(name="c", handler="stems", modal_image="ffmpeg", gpu="none")
    assert (route_image(cpu), route_gpu(config, cpu)) == ("ffmpeg", None)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('\n[routes.x]\nhandler = "vertical"\ngpu = "L4:9"\n', "routes.x: gpu"),
        ('\n[routes.x]\nhandler = "vertical"\ntimeout_seconds = 86000\n', "exceeds Modal's"),
        ('\n[routes.a-b]\nhandler = "vertical"\n[routes.a_b]\nhandler = "vertical"\n', "same"),
        ('\n[modal]\ncron = "every minute"\n', "modal: cron"),
        ("\n[modal]\nlease_ttl_seconds = 30\n", "modal: lease_ttl_seconds"),
        ('\n[routes.x]\nhandler = "vertical"\nscaledown_window_seconds = 1\n', "scaledown"),
    ],
)
def test_bad_modal_settings_are_one_line_errors(tmp_path: Path, extra: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        deploy_settings(load_config(write_config(tmp_path, extra)))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


# -- in-process: watcher tick + worker against SeaweedFS -------------------------------------


@pytest.fixture
def modal_env(s3_target: BucketSpec, monkeypatch: pytest.MonkeyPatch) -> BucketSpec:
    """The Secret's environment, pointing at the SeaweedFS test bucket."""
    monkeypatch.setenv("DROPGPU_BUCKET", s3_target.spec)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_target.endpoint_url or "")
    return s3_target


def tick(m: ModuleType) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    spawned: list[tuple[str, dict[str, Any]]] = []
    m.spawn_on_modal = lambda cls, spec: spawned.append((cls, spec))
    summary = m.watch_tick.local()
    return summary, spawned


def run_spawned(m: ModuleType, spawned: list[tuple[str, dict[str, Any]]]) -> list[dict]:
    # What Modal does with a spawn: the named class, in its own container, runs the method.
    return [getattr(m, cls)().run_job.local(spec) for cls, spec in spawned]


async def _put(spec: BucketSpec, items: dict[str, bytes]) -> None:
    async with spec.open() as bucket:
        for key, data in items.items():
            await put_bytes(bucket, key, data)


async def _manifest_and_status(spec: BucketSpec, key: str, config: Any) -> tuple[dict, Any]:
    async with spec.open() as bucket:
        manifest = await read_manifest(bucket, key)
        status = await collect_status(bucket, config, cost=True)
    return manifest, status


def test_tick_spawns_keys_and_worker_writes_manifest_with_cost(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    m = import_app(monkeypatch, write_config(tmp_path))
    asyncio.run(_put(modal_env, {"inputs/count/live/set 1.bin": b"hello modal"}))

    summary, spawned = tick(m)
    assert summary["spawned"] == 1
    ((cls, spec),) = spawned
    assert cls == "Worker_count"
    # Plain data only: keys and settings, never file bytes.
    assert json.loads(json.dumps(spec)) == spec
    assert spec["rel"] == "live/set 1.bin" and spec["lease_ttl_seconds"] == 600
    assert "hello modal" not in json.dumps(spec)

    (result,) = run_spawned(m, spawned)
    assert result["status"] == "succeeded"
    assert executions(tmp_path / "counter") == 1

    manifest, status = asyncio.run(
        _manifest_and_status(modal_env, result["manifest_key"], m.RUN_CONFIG)
    )
    assert manifest["status"] == "succeeded"
    runtime = manifest["runtime"]
    assert runtime["executor"] == "modal" and runtime["modal_class"] == "Worker_count"
    assert runtime["gpu_type"] == "T4" and runtime["gpu_seconds"] > 0
    price = DEFAULT_GPU_USD_PER_SECOND["T4"]
    assert runtime["cost_usd"] == pytest.approx(price * runtime["gpu_seconds"], abs=1e-5)
    # Nothing secret in the manifest.
    assert "dropgpu-test-secret" not in json.dumps(manifest)

    assert status["count"].costed_jobs == 1
    assert status["count"].cost_usd == pytest.approx(runtime["cost_usd"])
    assert status["vertical"].cost_usd == 0.0
    assert "cost_usd" in format_status(status)

    # The next tick has nothing to do: done is done.
    summary, spawned = tick(m)
    assert spawned == [] and summary["spawned"] == 0


def test_tick_claims_no_more_than_free_containers(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    m = import_app(monkeypatch, write_config(tmp_path))  # count: max_containers = 2
    asyncio.run(_put(modal_env, {f"inputs/count/{i}.bin": f"job {i}".encode() for i in range(3)}))

    _, first = tick(m)
    assert len(first) == 2  # two containers' worth; the third input waits unclaimed
    _, second = tick(m)
    assert second == []  # both slots still hold live claims (queued or running)

    run_spawned(m, first)
    _, third = tick(m)
    assert len(third) == 1
    run_spawned(m, third)
    assert executions(tmp_path / "counter") == 3


def test_failed_spawn_releases_the_claim_for_the_next_tick(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    m = import_app(monkeypatch, write_config(tmp_path))
    asyncio.run(_put(modal_env, {"inputs/count/a.bin": b"spawn me"}))

    def broken(cls: str, spec: dict[str, Any]) -> None:
        raise RuntimeError("modal API unavailable")

    monkeypatch.setattr(m, "spawn_on_modal", broken)
    summary = m.watch_tick.local()
    assert summary["spawn_failed"] == 1

    # Released, not stuck until the lease (600 s) runs out.
    _, spawned = tick(m)
    assert len(spawned) == 1
    (result,) = run_spawned(m, spawned)
    assert result["status"] == "succeeded"


def test_worker_refuses_a_job_of_another_route(
    modal_env: BucketSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    m = import_app(monkeypatch, write_config(tmp_path))
    asyncio.run(_put(modal_env, {"inputs/count/a.bin": b"x"}))
    _, ((_, spec),) = tick(m)
    with pytest.raises(ValueError, match="sent to Worker_vertical"):
        m.Worker_vertical().run_job.local(spec)


# -- dropgpu deploy ---------------------------------------------------------------------------


def run_deploy_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        """
        import argparse, sys
        from infra.deploy.command import add_deploy_parser, run_deploy
        parser = argparse.ArgumentParser(prog="dropgpu")
        add_deploy_parser(parser.add_subparsers(dest="command", required=True))
        sys.exit(run_deploy(parser.parse_args(sys.argv[1:])))
        """
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),  # no ~/.modal.toml: no token
        "MODAL_CONFIG_PATH": str(tmp_path / "no-modal.toml"),
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(
        [sys.executable, "-c", script, "deploy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_deploy_dry_run_prints_the_plan(tmp_path: Path) -> None:
    proc = run_deploy_cli(tmp_path, "--config", str(write_config(tmp_path)), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "Worker_count: gpu T4" in proc.stdout
    assert "max_containers 2" in proc.stdout
    assert "cron '* * * * *'" in proc.stdout


def test_deploy_errors_are_one_line(tmp_path: Path) -> None:
    bad = write_config(tmp_path, '\n[routes.x]\nhandler = "vertical"\ngpu = "L4:9"\n')
    proc = run_deploy_cli(tmp_path, "--config", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "routes.x: gpu" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_deploy_cli(tmp_path, "--config", str(write_config(tmp_path)))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("dropgpu: no Modal token found")
    assert proc.stderr.count("\n") == 1


def test_built_in_defaults_deploy(tmp_path: Path) -> None:
    settings = deploy_settings(build_config({}, source="built-in defaults"))
    assert settings.workers["vertical"].gpu == "L4"
    assert all(ws.retries == 0 for ws in settings.workers.values())
