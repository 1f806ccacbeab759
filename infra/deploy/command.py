"""`dropgpu deploy`: validate the routes config, then run `modal deploy -m infra.deploy.modal_app`.

Everything that can be checked without a Modal account is checked here first
(config, GPU specs, timeouts against Modal's limits, class names), so the only
errors left for `modal deploy` are account-side: token, missing Secret keys.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import structlog

from infra.deploy.settings import DeploySettings, deploy_settings
from watcher.config import Config, config_file, load_config
from watcher.exceptions import ConfigError

log = structlog.get_logger(__name__)
APP_MODULE = "infra.deploy.modal_app"
EXIT_USAGE = 2


def add_deploy_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "deploy", help="deploy the watcher and GPU workers to Modal (wraps `modal deploy`)"
    )
    p.add_argument("--config", default=None, help="routes file (default ./dropgpu.toml if present)")
    p.add_argument("--modal-env", default=None, help="Modal environment (modal deploy --env)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan; deploy nothing"
    )
    return p


def describe(config: Config, settings: DeploySettings) -> str:
    """The deployment plan, one line per Modal object."""
    sched = settings.schedule
    when = f"cron '{sched.cron}'" if sched.kind == "cron" else f"every {sched.period_seconds} s"
    lines = [
        f"app {settings.app_name} (config: {config.source})",
        f"  watcher   watch_tick  {when}, slim image (no torch), "
        f"timeout {settings.watcher_timeout} s",
        f"  secret    {settings.secret_name}  keys: {', '.join(settings.required_secret_keys)}",
        f"  volume    {settings.volume_name} at {settings.model_dir}  models: "
        f"{', '.join(settings.models)}",
        f"  lease     {settings.lease_ttl_seconds:.0f} s "
        f"(heartbeat {settings.heartbeat_seconds:.0f} s); Modal retries 0: dropgpu attempts decide",
    ]
    for ws in settings.workers.values():
        lines.append(
            f"  route     {ws.route:<12} {ws.class_name}: gpu {ws.gpu or 'none (CPU)'}, "
            f"image {ws.image}, max_containers {ws.max_containers}, timeout {ws.timeout} s, "
            f"scaledown {ws.scaledown_window} s"
        )
    return "\n".join(lines)


def _has_modal_token() -> bool:
    # Reads env and ~/.modal.toml only; no network.
    from modal.config import config

    return bool(config.get("token_id") and config.get("token_secret"))


def run_deploy(args: argparse.Namespace) -> int:
    """Validate, print the plan, run `modal deploy`. Returns the exit code."""
    path = config_file(args.config)
    try:
        config = load_config(path)
        settings = deploy_settings(config)
    except ConfigError as exc:
        print(f"dropgpu: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(describe(config, settings))
    if args.dry_run:
        return 0
    if not _has_modal_token():
        print(
            "dropgpu: no Modal token found: run `modal token new` (or set MODAL_TOKEN_ID and "
            "MODAL_TOKEN_SECRET), then `dropgpu deploy` again",
            file=sys.stderr,
        )
        return EXIT_USAGE
    env = dict(os.environ)
    env.pop("DROPGPU_CONFIG", None)
    if path is not None:
        # The app module reads the same file at import, locally and in its containers.
        env["DROPGPU_CONFIG"] = str(path)
    cmd = [sys.executable, "-m", "modal", "deploy", "-m", APP_MODULE]
    if args.modal_env:
        cmd += ["--env", args.modal_env]
    log.info("running modal deploy", app=settings.app_name, modal_env=args.modal_env)
    try:
        rc = subprocess.run(cmd, env=env, check=False).returncode
    except OSError as exc:
        print(f"dropgpu: cannot run modal: {exc}", file=sys.stderr)
        return 1
    if rc != 0:
        print(
            f"dropgpu: modal deploy failed (exit {rc}); its message is above "
            f"(a missing Secret key? create the Secret '{settings.secret_name}' first)",
            file=sys.stderr,
        )
        return 1
    print(
        f"deployed {settings.app_name}: drop files under inputs/<route>/; "
        f"logs: modal app logs {settings.app_name}"
    )
    return 0
