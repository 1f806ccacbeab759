"""Follow dropgpu completions and mirror every succeeded job's outputs to a local folder.

    python docs/examples/follow_feed.py --bucket s3://media --dest ./results --follow
    python docs/examples/follow_feed.py --bucket ./bucket --dest ./results    # one pass

For each completion in the feed it reads the manifest, downloads the outputs
(each checked against the manifest's sha256) into
``DEST/<route>/<input file>/`` and prints one line. Its position is saved in
``--state`` after every completion, so a restart (or a crash) neither skips
completions nor handles one twice. Failed jobs are printed with their error.

Needs only the dropgpu package (``pip install dropgpu``) and read access to the
bucket (List + Get on ``_dropgpu/feed/`` and ``outputs/``). S3 credentials and
region come from the usual AWS environment variables.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from handlers.contract.consumer import (
    ConsumerError,
    FeedCursor,
    FeedItem,
    fetch_outputs,
    iter_feed,
    open_bucket,
    output_dir_for,
    read_manifest,
)
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError, ObjectNotFound


async def handle(bucket: Bucket, item: FeedItem, dest: Path) -> str:
    """Mirror one completion; returns the line to print."""
    try:
        manifest = await read_manifest(bucket, item.manifest_key)
    except ObjectNotFound:
        return f"gone     {item.input_key} (its manifest was deleted)"
    if manifest["input"]["etag"] != item.etag:
        # A newer version of the input was processed since; its own feed record follows.
        return f"replaced {item.input_key}"
    if manifest["status"] == "failed":
        error = manifest["error"]
        return f"failed   {item.input_key}: {error['kind']}: {error['message']}"
    folder = dest / output_dir_for(item.input_key)
    paths = await fetch_outputs(bucket, manifest, folder)
    return f"ok       {item.input_key} -> {len(paths)} file(s) in {folder}"


async def main(args: argparse.Namespace) -> int:
    cursor = FeedCursor.load(args.state)
    async with open_bucket(args.bucket, endpoint_url=args.endpoint_url) as bucket:
        async for item in iter_feed(
            bucket,
            since=cursor.last_key,
            seen=cursor.recent,
            route=args.route,
            follow=args.follow,
            poll=args.poll,
        ):
            print(await handle(bucket, item, args.dest), flush=True)
            cursor.advance(item)
            cursor.save(args.state)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True, help="s3://name or a local folder")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (R2, MinIO, ...)")
    parser.add_argument("--dest", type=Path, required=True, help="where outputs are mirrored")
    parser.add_argument("--state", type=Path, default=Path("follow_feed.state.json"))
    parser.add_argument("--route", default=None, help="only this route")
    parser.add_argument("--follow", action="store_true", help="keep polling for new completions")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between polls")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args)))
    except KeyboardInterrupt:
        sys.exit(0)
    except (ConsumerError, BucketError) as exc:
        print(f"follow_feed: {exc}", file=sys.stderr)
        sys.exit(1)
