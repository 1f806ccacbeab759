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
from typing import Any

from handlers.contract.consumer import DEFAULT_OVERLAP_S, FeedItem, iter_feed, parse_since
from watcher.cli.errors import ExitCode
from watcher.cli.options import add_command, bucket_options, checked
from watcher.config import ROUTE_NAME


def add_feed_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``feed`` to the ``dropgpu`` subcommands (``subparsers`` from add_subparsers)."""
    p = add_command(
        subparsers,
        "feed",
        parents=[bucket_options()],
        help="print completed jobs from the completion feed (--follow to keep watching)",
        description="Print completed jobs (succeeded and failed) in commit order.",
    )
    p.add_argument(
        "--since",
        type=parse_since,  # fails now, with the accepted forms
        default=None,
        metavar="TIME|KEY",
        help="ISO time (UTC if no zone), 'now', a duration ago (15m, 2h, 7d), or a feed key "
        "to resume after (default: every record kept)",
    )
    p.add_argument(
        "--route",
        type=checked(
            str, ROUTE_NAME.fullmatch, "--route {value!r}: not a route name ([a-z0-9][a-z0-9_-]*)"
        ),
        default=None,
        help="only this route's completions",
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep polling for new ones")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--poll",
        type=checked(float, lambda s: s > 0, "--poll must be positive"),
        default=2.0,
        help="seconds between polls with --follow (default 2)",
    )
    p.add_argument(
        "--overlap",
        type=checked(
            float, lambda s: 0 <= s <= 86_400, "--overlap must be between 0 and 86400 seconds"
        ),
        default=DEFAULT_OVERLAP_S,
        help="seconds of the feed re-read to catch late records "
        f"(default {DEFAULT_OVERLAP_S:g}; see docs/consumers.md)",
    )
    p.set_defaults(func=run_feed)
    return p


def format_item(item: FeedItem, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(item.to_dict(), ensure_ascii=False)
    return "  ".join(
        (item.committed_at, f"{item.status:<9}", item.route, item.input_key, item.manifest_key)
    )


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
    return ExitCode.OK


def run_feed(args: argparse.Namespace) -> int:
    """Run ``dropgpu feed``; returns the exit code (errors: watcher/cli/errors.py)."""
    try:
        return asyncio.run(_feed(args))
    except KeyboardInterrupt:
        return ExitCode.OK  # Ctrl-C is how --follow ends
    except BrokenPipeError:
        # `dropgpu feed | head`: the reader left. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again, and stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
