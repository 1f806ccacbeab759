"""Error text that quotes a URL with a token reaches no record (issue 11 point 3).

A handler (or a library under it) may fail with a message holding a signed URL.
Failure records, failed and gave_up manifests, and the log all get it redacted:
the runner turns errors into text with infra.text.one_line, which redacts URLs.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import ClassVar

from handlers.exceptions import InputError, TransientError
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult
from infra.log import configure_logging
from tests.conftest import BucketSpec
from tests.pipeline_helpers import make_config, put_bytes, read_manifest, run, tick_and_run

TOKEN = "X-Amz-Signature=0f3e9c2d7a51b8e4"
URL = f"https://uploader:hunter2pw@media.example/clip.mp4?{TOKEN}"


class LeakyParams(HandlerParams):
    transient: bool = True


class LeakyHandler:
    """Fails quoting a presigned URL, the way an HTTP library's error would."""

    name: ClassVar[str] = "leaky"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type[HandlerParams]] = LeakyParams
    extensions: ClassVar[frozenset[str]] = frozenset({".bin"})

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params: LeakyParams = ctx.params  # type: ignore[assignment]
        if params.transient:
            raise TransientError(f"ClientResponseError: 503, url='{URL}'")
        raise InputError(f"cannot fetch the overlay from {URL}")


def test_errors_quoting_a_url_are_redacted_in_records_manifests_and_logs(
    target: BucketSpec, tmp_path: Path
) -> None:
    ref = "tests.test_redaction:LeakyHandler"
    config = make_config(
        {
            "flaky": {"handler": ref, "settle_seconds": 0, "max_attempts": 2},
            "broken": {"handler": ref, "settle_seconds": 0, "params": {"transient": False}},
        }
    )
    stream = io.StringIO()
    configure_logging(json=True, level="DEBUG", stream=stream)

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/flaky/a.bin", b"a")
            await put_bytes(bucket, "inputs/broken/b.bin", b"b")
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert sorted(o.status for _, o in outcomes) == ["failed", "retry"]
            failure_records = [k for k in await _keys(bucket) if ".failed-" in k]
            assert len(failure_records) == 1
            await asyncio.sleep(1.1)  # the retry time is compared with the store's clock
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["failed"]  # gave up
            gave_up = await read_manifest(bucket, "outputs/flaky/a.bin/manifest.json")
            failed = await read_manifest(bucket, "outputs/broken/b.bin/manifest.json")
            assert gave_up["error"]["kind"] == "gave_up"
            assert "https://media.example/clip.mp4" in gave_up["error"]["message"]
            assert failed["error"]["message"] == (
                "cannot fetch the overlay from https://media.example/clip.mp4"
            )
            for key in await _keys(bucket):
                body = await bucket.get_bytes(key)
                assert b"0f3e9c2d7a51b8e4" not in body and b"hunter2pw" not in body, key

    try:
        run(scenario())
    finally:
        configure_logging(json=False)
    logged = stream.getvalue()
    assert "job_attempt_failed" in logged or "retry_scheduled" in logged
    assert "0f3e9c2d7a51b8e4" not in logged and "hunter2pw" not in logged


async def _keys(bucket: object) -> list[str]:
    return [o.key for o in (await bucket.list("")).objects]  # type: ignore[attr-defined]
