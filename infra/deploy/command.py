"""`dropgpu deploy`: validate the routes config, then run `modal deploy -m infra.deploy.modal_app`.

Everything that can be checked without a Modal account is checked here first
(config, GPU specs, timeouts against Modal's limits, class names), so the only
errors left for `modal deploy` are account-side: token, missing Secret keys.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import structlog

from infra.deploy.settings import CONFIG_ENV, DeploySettings, deploy_settings
from watcher.cli.errors import ExitCode, one_line_errors
from watcher.cli.options import add_command, config_option
from watcher.config import Config, config_file, load_config

log = structlog.get_logger(__name__)
APP_MODULE = "infra.deploy.modal_app"


def add_deploy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``deploy`` to the ``dropgpu`` subcommands (``subparsers`` from add_subparsers)."""
    p = add_command(
        subparsers,
        "deploy",
        parents=[config_option()],
        help="deploy the watcher and GPU workers to Modal (wraps `modal deploy`)",
    )
    p.add_argument("--modal-env", default=None, help="Modal environment (modal deploy --env)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan; deploy nothing"
    )
    p.add_argument(
        "--tick-now",
        action="store_true",
        help="ask the deployed app to run one watcher tick now (deploys nothing); "
        "its workers belong to the deployed app, so they outlive this command",
    )
    p.set_defaults(func=run_deploy)
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


def tick_now(settings: DeploySettings, modal_env: str | None) -> int:
    """Call the deployed ``watch_tick`` once and print its summary.

    Not `modal run ...::watch_tick`: that builds an ephemeral app whose spawned workers
    are stopped when the command exits.
    """
    if not _has_modal_token():
        print("dropgpu: no Modal token found: run `modal token new`", file=sys.stderr)
        return ExitCode.USAGE
    import modal

    try:
        fn = modal.Function.from_name(settings.app_name, "watch_tick", environment_name=modal_env)
        summary = fn.remote()
    except Exception as exc:  # not deployed, wrong environment, network
        print(
            f"dropgpu: tick failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            f" (is {settings.app_name} deployed? `dropgpu deploy`)",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return ExitCode.OK


@one_line_errors()
def run_deploy(args: argparse.Namespace) -> int:
    """Validate, print the plan, run `modal deploy`. Returns the exit code."""
    path = config_file(args.config)
    config = load_config(path)
    settings = deploy_settings(config)
    if args.tick_now:
        return tick_now(settings, args.modal_env)
    print(describe(config, settings))
    if args.dry_run:
        return ExitCode.OK
    if not _has_modal_token():
        print(
            "dropgpu: no Modal token found: run `modal token new` (or set MODAL_TOKEN_ID and "
            "MODAL_TOKEN_SECRET), then `dropgpu deploy` again",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    env = dict(os.environ)
    env.pop(CONFIG_ENV, None)
    if path is not None:
        # The app module reads the same file at import, locally and in its containers.
        env[CONFIG_ENV] = str(path)
    cmd = [sys.executable, "-m", "modal", "deploy", "-m", APP_MODULE]
    if args.modal_env:
        cmd += ["--env", args.modal_env]
    log.info("modal_deploy_started", app=settings.app_name, modal_env=args.modal_env)
    try:
        rc = subprocess.run(cmd, env=env, check=False).returncode
    except OSError as exc:
        print(f"dropgpu: cannot run modal: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    if rc != 0:
        print(
            f"dropgpu: modal deploy failed (exit {rc}); its message is above "
            f"(a missing Secret key? create the Secret '{settings.secret_name}' first)",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    print(
        f"deployed {settings.app_name}: drop files under inputs/<route>/; "
        f"logs: modal app logs {settings.app_name}"
    )
    return ExitCode.OK
