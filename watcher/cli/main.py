"""The `dropgpu` command line: watch, status, retry, doctor, sample, models, feed, deploy.

Global options (``--version``, ``-v``, ``--log-level``, ``--log-format``) come
before or after the subcommand; each subcommand's handler is ``args.func``.
User mistakes (bad flags, bad config, unusable bucket) end in one line on stderr
and exit code 2, never a traceback (watcher/cli/errors.py has every code). Job
failures are not CLI failures: they are failed manifests in the bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from infra.log import FORMAT_ENV, LEVEL_ENV, configure_logging
from infra.storage.errors import BucketError
from infra.version import dropgpu_version
from watcher.cli.errors import ExitCode, one_line_errors
from watcher.cli.options import (
    add_command,
    bucket_options,
    checked,
    config_option,
    logging_options,
)
from watcher.cli.signals import restore_ctrl_c
from watcher.config import Config, load_config
from watcher.exceptions import ConfigError, UnsafeStoreError

if TYPE_CHECKING:
    from infra.storage.bucket import Bucket

ConfigCommand = Callable[[argparse.Namespace, Config], Awaitable[int]]
# `watch --once --wait-retries` without a value: the default backoff_max_seconds.
WAIT_RETRIES_DEFAULT_S = 900.0


def _with_config(command: ConfigCommand) -> Callable[[argparse.Namespace], int]:
    """Load ``--config``, then run the async ``command`` with it."""

    def run(args: argparse.Namespace) -> int:
        return asyncio.run(command(args, load_config(args.config)))

    return run


def build_parser() -> argparse.ArgumentParser:
    from infra.deploy.command import add_deploy_parser
    from watcher.cli.feed import add_feed_parser
    from watcher.cli.models import add_models_parser

    parser = argparse.ArgumentParser(
        prog="dropgpu",
        description="Drop files into a bucket; get GPU-processed outputs back.",
        parents=[logging_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"dropgpu {dropgpu_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    store = [bucket_options(), config_option()]

    w = add_command(sub, "watch", parents=store, help="claim new inputs and process them")
    w.add_argument(
        "--interval",
        type=checked(float, lambda s: s > 0, "--interval must be positive"),
        default=None,
        help="seconds between ticks",
    )
    w.add_argument(
        "--workers",
        type=checked(int, lambda n: n >= 1, "--workers must be at least 1"),
        default=None,
        help="worker processes (default: per machine)",
    )
    w.add_argument("--once", action="store_true", help="process what is there now, then exit")
    w.add_argument(
        "--wait-retries",
        type=checked(float, lambda s: s >= 0, "--wait-retries must be 0 or more seconds"),
        nargs="?",
        const=WAIT_RETRIES_DEFAULT_S,
        default=None,
        metavar="SECONDS",
        help="with --once: also wait for scheduled retries due within SECONDS "
        f"(default {WAIT_RETRIES_DEFAULT_S:.0f}), so transient failures end with a manifest",
    )
    w.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    w.add_argument("--scratch-dir", default=None, help="local scratch folder for jobs")
    w.set_defaults(func=_with_config(_cmd_watch))

    s = add_command(
        sub, "status", parents=store, help="pending / running / succeeded / failed per route"
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument(
        "--cost",
        action="store_true",
        help="also sum GPU-seconds and estimated cost per route (one GET per finished job)",
    )
    s.set_defaults(func=_with_config(_cmd_status))

    r = add_command(sub, "retry", parents=store, help="make finished jobs run again")
    r.add_argument(
        "keys", nargs="+", metavar="KEY", help="input keys, e.g. inputs/vertical/clip.mp4"
    )
    r.set_defaults(func=_with_config(_cmd_retry))

    d = add_command(
        sub, "doctor", parents=store, help="check config, ffmpeg, devices and the store"
    )
    d.set_defaults(func=_with_config(_cmd_doctor))

    sm = add_command(sub, "sample", help="write a 10 s test clip (e.g. into inputs/vertical/)")
    sm.add_argument("path", type=Path, help="e.g. bucket/inputs/vertical/sample.mp4")
    sm.add_argument(
        "--seconds",
        type=checked(float, lambda s: 0 < s <= 600, "--seconds must be between 0 and 600"),
        default=10.0,
    )
    sm.set_defaults(func=_cmd_sample)

    add_models_parser(sub)
    add_deploy_parser(sub)
    add_feed_parser(sub)
    return parser


def _open(args: argparse.Namespace) -> Bucket:
    from infra.storage.url import open_bucket

    return open_bucket(args.bucket, endpoint_url=args.endpoint_url)


def _where_to_drop(config: Config, bucket_url: str) -> str:
    routes = ", ".join(f"inputs/{r.name}/" for r in config.enabled_routes())
    return f"watching {bucket_url}: drop files under {routes}"


async def _cmd_watch(args: argparse.Namespace, config: Config) -> int:
    from watcher.local.loop import StopSignal, watch
    from watcher.local.pool import (
        LocalWorkerPool,
        WorkerOptions,
        default_scratch_root,
        default_worker_count,
    )
    from watcher.store_check import check_create_only

    if args.wait_retries is not None and not args.once:
        raise ConfigError("--wait-retries needs --once (a running watch always takes retries)")
    interval = args.interval if args.interval is not None else config.watch.interval_seconds
    async with _open(args) as bucket:
        check = await check_create_only(bucket, concurrent=1)
        if not check.safe:
            raise UnsafeStoreError(f"{bucket.url}: {check.detail}; run `dropgpu doctor`")
        scratch = Path(
            args.scratch_dir or config.watch.scratch_dir or default_scratch_root()
        ).absolute()
        bucket_arg = (
            args.bucket
            if args.bucket.startswith(("s3://", "file://"))
            else str(Path(args.bucket).absolute())
        )
        options = WorkerOptions(
            bucket=bucket_arg,
            endpoint_url=args.endpoint_url,
            scratch_root=str(scratch),
            device=args.device,
        )
        pool = LocalWorkerPool(args.workers or default_worker_count(), options)
        stop = StopSignal()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.press)
        loop.add_signal_handler(signal.SIGTERM, stop.press)
        pool.start()
        if not args.once:
            print(_where_to_drop(config, bucket.url), file=sys.stderr)
            print(
                "Ctrl-C once to finish running jobs, twice to stop now and release them",
                file=sys.stderr,
            )
        try:
            summary = await watch(
                bucket,
                config,
                pool,
                once=args.once,
                interval=interval,
                stop=stop,
                wait_retries_s=args.wait_retries,
            )
        finally:
            pool.stop(kill=True, timeout=1)
    print("\n".join(summary.lines()), file=sys.stderr)
    # Even when jobs failed (their manifests say so); a second signal left jobs unfinished.
    return ExitCode.INTERRUPTED if summary.forced else ExitCode.OK


async def _cmd_status(args: argparse.Namespace, config: Config) -> int:
    from watcher.status import collect_status, format_status

    async with _open(args) as bucket:
        status = await collect_status(bucket, config, cost=args.cost)
    if args.json:
        print(json.dumps({name: asdict(st) for name, st in status.items()}, indent=2))
    else:
        print(format_status(status))
    return ExitCode.OK


async def _cmd_retry(args: argparse.Namespace, config: Config) -> int:
    from watcher.status import retry_key

    async with _open(args) as bucket:
        # Every key first, then the report: a reader that leaves early (`| head -1`)
        # loses lines, never retries.
        results = [await retry_key(bucket, config, key) for key in args.keys]
    for result in results:
        print(f"{'ok' if result.ok else 'skipped'}: {result.key}: {result.message}")
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.FAILED


async def _cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    from watcher.doctor import bucket_checks, local_checks

    checks = local_checks(config)
    try:
        async with _open(args) as bucket:
            checks += await bucket_checks(bucket)
    except BucketError as exc:
        from watcher.doctor import Check

        checks.append(Check("bucket", False, str(exc)))
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<17} {c.detail}")
    return ExitCode.OK if all(c.ok for c in checks) else ExitCode.FAILED


def _cmd_sample(args: argparse.Namespace) -> int:
    from watcher.cli.sample import write_sample_clip

    path = write_sample_clip(args.path, seconds=args.seconds)
    print(f"wrote {path}")
    return ExitCode.OK


def _configure_logging(args: argparse.Namespace) -> None:
    """Flags win over $DROPGPU_LOG_LEVEL / $DROPGPU_LOG_FORMAT; --log-level wins over -v."""
    level = args.log_level or ("DEBUG" if args.verbose else None)
    # Through the environment, which configure_logging reads, so that the spawned
    # worker processes (watcher/local/pool.py) log the same way as this one.
    if level:
        os.environ[LEVEL_ENV] = level
    if args.log_format:
        os.environ[FORMAT_ENV] = args.log_format
    configure_logging()


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    restore_ctrl_c()  # even when started as a background job of a script (signals.py)
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
