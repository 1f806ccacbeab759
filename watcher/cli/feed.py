"""`dropgpu feed`: print completions from the bucket's completion feed as they land.

    dropgpu feed [--since TIME|KEY] [--route R] [--follow] [--json]

One line per completion (``--json``: one JSON object per line, flushed at once,
for piping into other programs). Bad arguments and unusable buckets end in one
line on stderr and exit code 2; Ctrl-C while following exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from handlers.contract.consumer import (
    DEFAULT_OVERLAP_S,
    ConsumerError,
    FeedItem,
    iter_feed,
    parse_since,
)
from infra.storage.errors import BucketConfigError, BucketError
from watcher.config import ROUTE_NAME

EXIT_USAGE = 2
_DEFAULT_BUCKET = "./bucket"


def add_feed_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``feed`` to the ``dropgpu`` subcommands (``subparsers`` from add_subparsers)."""
    p = subparsers.add_parser(
        "feed",
        help="print completed jobs from the completion feed (--follow to keep watching)",
        description="Print completed jobs (succeeded and failed) in commit order.",
    )
    _add_arguments(p)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bucket",
        default=os.environ.get("DROPGPU_BUCKET", _DEFAULT_BUCKET),
        help="local folder (default ./bucket), file:///path, or s3://name (env DROPGPU_BUCKET)",
    )
    p.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 endpoint for R2/MinIO/SeaweedFS (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)",
    )
    p.add_argument(
        "--since",
        default=None,
        metavar="TIME|KEY",
        help="ISO time (UTC if no zone), 'now', a duration ago (15m, 2h, 7d), or a feed key "
        "to resume after (default: every record kept)",
    )
    p.add_argument("--route", default=None, help="only this route's completions")
    p.add_argument("--follow", "-f", action="store_true", help="keep polling for new ones")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--poll", type=float, default=2.0, help="seconds between polls with --follow (default 2)"
    )
    p.add_argument(
        "--overlap",
        type=float,
        default=DEFAULT_OVERLAP_S,
        help="seconds of the feed re-read to catch late records "
        f"(default {DEFAULT_OVERLAP_S:g}; see docs/consumers.md)",
    )


def format_item(item: FeedItem, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(item.to_dict(), ensure_ascii=False)
    return "  ".join(
        (item.committed_at, f"{item.status:<9}", item.route, item.input_key, item.manifest_key)
    )


def _check(args: argparse.Namespace) -> None:
    if args.route is not None and not ROUTE_NAME.fullmatch(args.route):
        raise ConsumerError(f"--route {args.route!r}: not a route name ([a-z0-9][a-z0-9_-]*)")
    if not args.poll > 0:
        raise ConsumerError("--poll must be positive")
    if not 0 <= args.overlap <= 86_400:
        raise ConsumerError("--overlap must be between 0 and 86400 seconds")
    if args.since is not None:
        parse_since(args.since)  # fail now, with the accepted forms


async def _feed(args: argparse.Namespace) -> int:
    from infra.storage.url import open_bucket

    async with open_bucket(args.bucket, endpoint_url=args.endpoint_url) as bucket:
        async for item in iter_feed(
            bucket,
            since=args.since,
            route=args.route,
            follow=args.follow,
            poll=args.poll,
            overlap_s=args.overlap,
        ):
            print(format_item(item, as_json=args.json), flush=True)
    return 0


def run_feed(args: argparse.Namespace) -> int:
    """Run ``dropgpu feed``; returns the exit code. Never raises for user mistakes."""
    try:
        _check(args)
        return asyncio.run(_feed(args))
    except (ConsumerError, BucketConfigError) as exc:
        print(f"dropgpu: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BucketError as exc:
        print(f"dropgpu: storage error: {exc} (try again; check the endpoint)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how --follow ends
    except BrokenPipeError:
        # `dropgpu feed | head`: the reader left. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again, and stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (``python -m watcher.cli.feed``) until it is wired into `dropgpu`."""
    from infra.log import configure_logging

    parser = argparse.ArgumentParser(prog="dropgpu feed", description="Print completed jobs.")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    return run_feed(args)


if __name__ == "__main__":
    sys.exit(main())
