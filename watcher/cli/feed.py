"""`dropgpu feed`: print completions from the bucket's completion feed as they land.

    dropgpu feed [--since TIME|KEY] [--route R] [--follow] [--json]

One line per completion (``--json``: one JSON object per line, flushed at once,
for piping into other programs). Bad arguments and unusable buckets end in one
line on stderr and exit code 2; SIGINT (Ctrl-C) or SIGTERM while following exits
0, however the command was started; a reader that leaves (``| head``) ends it
quietly (watcher/cli/errors.py).

``--since KEY`` resumes after KEY: the records after it, plus the records before
it that landed late, i.e. became visible (the store's LastModified) no earlier
than ``RESUME_SLACK_S`` before KEY did. A consumer that handled KEY has seen
every record that was visible when KEY was, so those are not printed again; the
overlap window is still read, so a record committed late with an earlier time
in its key is never missed. Without KEY's own listing entry (expired by a
lifecycle rule, or a key from elsewhere) the whole overlap window is printed
again: at-least-once, never a gap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import timedelta
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from handlers.contract.consumer import DEFAULT_OVERLAP_S, FeedItem, iter_feed, parse_since
from handlers.contract.keys import FEED, feed_start_key, parse_feed_key
from infra.storage.bucket import Bucket
from watcher.cli.errors import ExitCode
from watcher.cli.options import add_command, bucket_options, checked
from watcher.cli.signals import until_signalled
from watcher.config import ROUTE_NAME

log: FilteringBoundLogger = structlog.get_logger(__name__)

# A record becomes visible one PUT after the store stamps its LastModified (a retry
# is a new PUT with a new stamp). One that was stamped this long before the resume
# key may still have been in flight when the consumer listed that key: treat it as
# late and print it again rather than risk a gap.
RESUME_SLACK_S = 2.0


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
        help="ISO time (UTC if no zone), 'now', a duration ago (15m, 2h, 7d): records at or "
        "after it; or a feed key to resume after: records after it, plus earlier-keyed "
        "ones that landed after it did (default: every record kept)",
    )
    p.add_argument(
        "--route",
        type=checked(
            str, ROUTE_NAME.fullmatch, "--route {value!r}: not a route name ([a-z0-9][a-z0-9_-]*)"
        ),
        default=None,
        help="only this route's completions",
    )
    p.add_argument(
        "--follow", "-f", action="store_true", help="keep polling for new ones (until SIGINT/TERM)"
    )
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


async def delivered_before(bucket: Bucket, resume_key: str, overlap_s: float) -> set[str]:
    """Keys in the overlap window before ``resume_key`` that whoever handled it has seen.

    One LIST of the window. A feed listing yields in key order, so a consumer that
    handled ``resume_key`` handled every smaller key visible when it listed; those
    visible (LastModified) ``RESUME_SLACK_S`` before ``resume_key`` surely were.
    Empty when ``resume_key`` is not listed: nothing is known, everything is re-printed.
    """
    resume = parse_feed_key(resume_key)
    if resume is None:
        return set()
    # A little wider than the window iter_feed re-reads, so none of its keys is left out.
    start = resume.time - timedelta(seconds=overlap_s + 1)
    listing = await bucket.list(FEED, start_after=feed_start_key(start))
    landed = {obj.key: obj.last_modified for obj in listing.objects}
    if resume_key not in landed:
        log.warning("feed_resume_key_not_found_reprinting_overlap", key=resume_key)
        return set()
    cutoff = landed[resume_key] - timedelta(seconds=RESUME_SLACK_S)
    return {key for key, at in landed.items() if key < resume_key and at < cutoff}


async def _print_feed(bucket: Bucket, args: argparse.Namespace) -> int:
    seen: set[str] = set()
    if isinstance(args.since, str):  # a feed key: resume strictly after what was handled
        seen = await delivered_before(bucket, args.since, args.overlap)
    async for item in iter_feed(
        bucket,
        since=args.since,
        route=args.route,
        follow=args.follow,
        poll=args.poll,
        overlap_s=args.overlap,
        seen=seen,
    ):
        print(format_item(item, as_json=args.json), flush=True)
    return ExitCode.OK


async def _feed(args: argparse.Namespace) -> int:
    from infra.storage.url import open_bucket

    async with open_bucket(args.bucket, endpoint_url=args.endpoint_url) as bucket:
        code = await until_signalled(_print_feed(bucket, args))
    return ExitCode.OK if code is None else code  # a signal is how --follow ends


def run_feed(args: argparse.Namespace) -> int:
    """Run ``dropgpu feed``; returns the exit code (errors: watcher/cli/errors.py)."""
    try:
        return asyncio.run(_feed(args))
    except KeyboardInterrupt:
        return ExitCode.OK  # Ctrl-C before the loop's own handlers were installed
    # `dropgpu feed | head`: a closed stdout ends it quietly, as it ends every command
    # (watcher/cli/errors.py one_line_errors).
