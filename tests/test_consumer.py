"""The consumer toolkit and the example program of docs/consumers.md, on real storage."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.contract.consumer import (
    ConsumerError,
    FeedCursor,
    ManifestInvalid,
    OutputMismatch,
    fetch_outputs,
    iter_feed,
    manifest_key_for,
    output_dir_for,
    read_manifest,
    wait_for_manifest,
)
from handlers.contract.keys import JobRef, output_file_name
from infra.storage.errors import ObjectNotFound
from tests.conftest import BucketSpec
from tests.pipeline_helpers import (
    REPO,
    cli_env,
    counting_route,
    make_config,
    put_bytes,
    run,
    tick_and_run,
)

KEY = "inputs/count/live/set 1.bin"
MANIFEST = "outputs/count/live/set 1.bin/manifest.json"


def test_keys_and_folders() -> None:
    assert manifest_key_for(KEY) == MANIFEST
    assert str(output_dir_for(KEY)) == "count/live/set 1.bin"
    for bad in ("outputs/count/a.bin", "inputs/count/", "inputs/"):
        with pytest.raises(ConsumerError, match="is not an input key"):
            manifest_key_for(bad)
    with pytest.raises(ConsumerError, match=re.escape("'..'")):
        output_dir_for("inputs/count/../../etc/passwd")


def test_output_names_under_version_folders_and_the_older_flat_layout() -> None:
    ref = JobRef("count", "live/set 1.bin", "e1")
    prefix = ref.output_prefix
    assert output_file_name(prefix, ref.output_key("copy.bin", 3)) == "copy.bin"
    assert (
        output_file_name(prefix, f"{prefix}copy.bin") == "copy.bin"
    )  # manifests written before version folders
    for bad in (
        f"{prefix}not-a-version/copy.bin",  # another input's folder, not a version folder
        f"{prefix}{ref.version_dir(1)}/deeper/copy.bin",
        f"{prefix}{ref.version_dir(1)}/",
        "outputs/count/other.bin/copy.bin",
    ):
        assert output_file_name(prefix, bad) is None, bad


def test_waiting_consumer_sees_the_manifest_once_it_exists(
    target: BucketSpec, tmp_path: Path
) -> None:
    config = make_config({"count": counting_route(tmp_path / "runs")})

    async def scenario() -> None:
        async with target.open() as bucket:
            with pytest.raises(TimeoutError, match="no manifest for inputs/count/live"):
                await wait_for_manifest(bucket, KEY, timeout=0.2, poll=0.05)
            etag1 = await put_bytes(bucket, KEY, b"first version")
            waiter = asyncio.create_task(wait_for_manifest(bucket, KEY, timeout=30, poll=0.05))
            await asyncio.sleep(0.2)
            assert not waiter.done()  # nothing committed yet
            await tick_and_run(bucket, config, tmp_path)
            first = await waiter
            assert first["status"] == "succeeded" and first["input"]["etag"] == etag1

            # Waiting for a specific version ignores the older version's manifest.
            etag2 = await put_bytes(bucket, KEY, b"second version!")
            waiter = asyncio.create_task(
                wait_for_manifest(bucket, KEY, etag=etag2, timeout=30, poll=0.05)
            )
            await asyncio.sleep(0.2)
            assert not waiter.done()
            await tick_and_run(bucket, config, tmp_path)
            second = await waiter
            assert second["input"]["etag"] == etag2

            dest = tmp_path / "dest"
            paths = await fetch_outputs(bucket, second, dest)
            assert [p.read_bytes() for p in paths] == [b"second version!"]
            assert sorted(p.name for p in dest.iterdir()) == ["copy.bin"]  # no temp files left

            # Outputs that no longer match their manifest are refused.
            await put_bytes(bucket, second["outputs"][0]["key"], b"tampered")
            with pytest.raises(OutputMismatch, match=r"copy\.bin: 8 bytes"):
                await read_manifest(bucket, MANIFEST, verify_outputs=True)
            with pytest.raises(OutputMismatch):
                await fetch_outputs(bucket, second, tmp_path / "dest2")
            assert not (tmp_path / "dest2" / "copy.bin").exists()

            # A document that breaks the schema is named in one line.
            await put_bytes(bucket, MANIFEST, json.dumps({"status": "done"}).encode())
            with pytest.raises(ManifestInvalid, match="breaks the manifest schema"):
                await read_manifest(bucket, MANIFEST)
            await put_bytes(bucket, MANIFEST, b"{not json")
            with pytest.raises(ManifestInvalid, match="not valid JSON"):
                await read_manifest(bucket, MANIFEST)
            with pytest.raises(ObjectNotFound):
                await read_manifest(bucket, "outputs/count/none.bin/manifest.json")

    run(scenario())


def test_cursor_resumes_exactly_once(tmp_path: Path) -> None:
    config = make_config({"count": counting_route(tmp_path / "runs")})
    root = tmp_path / "bucket"
    (root / "inputs").mkdir(parents=True)
    state = tmp_path / "cursor.json"

    async def scenario() -> None:
        async with BucketSpec("local", str(root)).open() as bucket:
            seen: list[str] = []
            for batch in range(3):
                for i in range(3):
                    await put_bytes(bucket, f"inputs/count/b{batch}-{i}.bin", b"x%d%d" % (batch, i))
                await tick_and_run(bucket, config, tmp_path)
                # A fresh process each time: only the saved cursor carries over.
                cursor = FeedCursor.load(state)
                async for item in iter_feed(bucket, since=cursor.last_key, seen=cursor.recent):
                    seen.append(item.input_key)
                    cursor.advance(item)
                    cursor.save(state)
            assert sorted(seen) == sorted(
                f"inputs/count/b{b}-{i}.bin" for b in range(3) for i in range(3)
            )
            assert len(seen) == len(set(seen))  # within the overlap, still no duplicates
        with pytest.raises(ConsumerError, match="not valid JSON"):
            FeedCursor.from_json("{")

    run(scenario())


def test_example_program_follows_completions(s3_target: BucketSpec, tmp_path: Path) -> None:
    """docs/examples/follow_feed.py, as a user would run it, against SeaweedFS."""
    config = make_config({"count": counting_route(tmp_path / "runs")})
    dest, state = tmp_path / "results", tmp_path / "state.json"
    example = [sys.executable, str(REPO / "docs/examples/follow_feed.py")]
    args = [*s3_target.cli_args, "--dest", str(dest), "--state", str(state)]

    def follow_once() -> list[str]:
        done = subprocess.run(
            [*example, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**cli_env(), **s3_target.env},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    async def drop(names: list[str]) -> None:
        async with s3_target.open() as bucket:
            for name in names:
                data = b"REJECT" if name.startswith("bad") else name.encode()
                await put_bytes(bucket, f"inputs/count/{name}", data)
            await tick_and_run(bucket, config, tmp_path)

    run(drop(["a.bin", "sub dir/b.bin", "bad.bin"]))
    lines = follow_once()
    assert len(lines) == 3
    assert any(line.startswith("failed   inputs/count/bad.bin: input:") for line in lines)
    assert (dest / "count/a.bin/copy.bin").read_bytes() == b"a.bin"
    assert (dest / "count/sub dir/b.bin/copy.bin").read_bytes() == b"sub dir/b.bin"

    run(drop(["c.bin"]))
    lines = follow_once()  # resumes from its state file: only the new completion
    assert lines == [f"ok       inputs/count/c.bin -> 1 file(s) in {dest / 'count/c.bin'}"]
    assert follow_once() == []


def test_docs_stay_true() -> None:
    """consumers.md shows the example program verbatim; manifest.md's example is valid."""
    from handlers.contract.manifest import validate_manifest

    consumers = (REPO / "docs/consumers.md").read_text()
    example = (REPO / "docs/examples/follow_feed.py").read_text()
    assert f"```python\n{example}```\n" in consumers
    manifest_doc = (REPO / "docs/manifest.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", manifest_doc, re.DOTALL)
    full = json.loads(blocks[0])
    validate_manifest(full)
    failed = {**full, **json.loads(blocks[1])}
    validate_manifest(failed)
    assert "handlers/contract/schema/manifest-v1.schema.json" in manifest_doc
