"""The `dropgpu` command line: watch, status, retry, doctor.

User mistakes (bad config, unusable bucket) end in one line on stderr and exit
code 2, never a traceback. Job failures are not CLI failures: they are failed
manifests in the bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import structlog

from handlers.exceptions import HandlerError
from infra.log import configure_logging
from infra.storage.errors import BucketConfigError, BucketError
from watcher.config import Config, load_config
from watcher.exceptions import ConfigError, UnsafeStoreError, WatcherError

log = structlog.get_logger("dropgpu")
DEFAULT_BUCKET = "./bucket"
EXIT_USAGE = 2


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bucket",
        default=os.environ.get("DROPGPU_BUCKET", DEFAULT_BUCKET),
        help="local folder (default ./bucket), file:///path, or s3://name (env DROPGPU_BUCKET)",
    )
    p.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 endpoint for R2/MinIO/SeaweedFS (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)",
    )
    p.add_argument("--config", default=None, help="routes file (default ./dropgpu.toml if present)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropgpu", description="Drop files into a bucket; get GPU-processed outputs back."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser("watch", help="claim new inputs and process them")
    _add_common(w)
    w.add_argument("--interval", type=float, default=None, help="seconds between ticks")
    w.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: per machine)"
    )
    w.add_argument("--once", action="store_true", help="process what is there now, then exit")
    w.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    w.add_argument("--scratch-dir", default=None, help="local scratch folder for jobs")

    s = sub.add_parser("status", help="pending / running / succeeded / failed per route")
    _add_common(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument(
        "--cost",
        action="store_true",
        help="also sum GPU-seconds and estimated cost per route (one GET per finished job)",
    )

    r = sub.add_parser("retry", help="make finished jobs run again")
    _add_common(r)
    r.add_argument(
        "keys", nargs="+", metavar="KEY", help="input keys, e.g. inputs/vertical/clip.mp4"
    )

    d = sub.add_parser("doctor", help="check config, ffmpeg, devices and the store")
    _add_common(d)

    sm = sub.add_parser("sample", help="write a 10 s test clip (e.g. into inputs/vertical/)")
    sm.add_argument("path", type=Path, help="e.g. bucket/inputs/vertical/sample.mp4")
    sm.add_argument("--seconds", type=float, default=10.0)
    from infra.deploy.command import add_deploy_parser
    from watcher.cli.feed import add_feed_parser
    from watcher.cli.models import add_models_parser

    add_models_parser(sub)
    add_deploy_parser(sub)
    add_feed_parser(sub)
    return parser


def _open(args: argparse.Namespace):  # -> Bucket
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

    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    interval = args.interval if args.interval is not None else config.watch.interval_seconds
    if interval <= 0:
        raise ConfigError("--interval must be positive")
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
                bucket, config, pool, once=args.once, interval=interval, stop=stop
            )
        finally:
            pool.stop(kill=True, timeout=1)
    done = ", ".join(f"{n} {k}" for k, n in sorted(summary.outcomes.items())) or "nothing to do"
    print(f"dropgpu: {done}", file=sys.stderr)
    for key in summary.failed_manifests:
        print(f"  failed: {key}", file=sys.stderr)
    return 0


async def _cmd_status(args: argparse.Namespace, config: Config) -> int:
    from watcher.status import collect_status, format_status

    async with _open(args) as bucket:
        status = await collect_status(bucket, config, cost=args.cost)
    if args.json:
        print(json.dumps({name: asdict(st) for name, st in status.items()}, indent=2))
    else:
        print(format_status(status))
    return 0


async def _cmd_retry(args: argparse.Namespace, config: Config) -> int:
    from watcher.status import retry_key

    code = 0
    async with _open(args) as bucket:
        for key in args.keys:
            result = await retry_key(bucket, config, key)
            print(f"{'ok' if result.ok else 'skipped'}: {result.key}: {result.message}")
            code = code if result.ok else 1
    return code


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
    return 0 if all(c.ok for c in checks) else 1


COMMANDS = {"watch": _cmd_watch, "status": _cmd_status, "retry": _cmd_retry, "doctor": _cmd_doctor}


def _cmd_sample(args: argparse.Namespace) -> int:
    from watcher.cli.sample import write_sample_clip

    if not 0 < args.seconds <= 600:
        raise ConfigError("--seconds must be between 0 and 600")
    path = write_sample_clip(args.path, seconds=args.seconds)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        if args.command == "sample":
            return _cmd_sample(args)
        if args.command == "models":  # takes no --config
            from watcher.cli.models import run_models

            return run_models(args)
        if args.command == "feed":  # takes no --config
            from watcher.cli.feed import run_feed

            return run_feed(args)
        if args.command == "deploy":  # reads its own --config
            from infra.deploy.command import run_deploy

            return run_deploy(args)
        config = load_config(args.config)
        return asyncio.run(COMMANDS[args.command](args, config))
    except (WatcherError, BucketConfigError) as exc:
        print(f"dropgpu: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BucketError as exc:
        print(f"dropgpu: storage error: {exc} (try again; check the endpoint)", file=sys.stderr)
        return 1
    except HandlerError as exc:
        print(f"dropgpu: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
