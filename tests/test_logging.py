from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import structlog

from handlers.jobs.webhooks import SECRET_ENV, drain_notifications
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile
from infra.log import configure_logging
from infra.storage.local import LocalFolderBucket
from tests.pipeline_helpers import counting_route, make_config, put_bytes, run, tick_and_run


@pytest.fixture
def json_log() -> io.StringIO:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    yield stream
    configure_logging(json=False)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def test_credentials_are_redacted(json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    log = structlog.get_logger("t")
    log.info(
        "connecting",
        aws_secret_access_key=secret,
        headers={"Authorization": "AWS4-HMAC-SHA256 Credential=x"},
        url=f"https://example.invalid/?sig={secret}",
        bucket="media",
    )
    text = json_log.getvalue()
    assert secret not in text
    (line,) = _lines(json_log)
    assert line["aws_secret_access_key"] == "***"
    assert line["headers"]["Authorization"] == "***"
    assert line["bucket"] == "media"
    assert line["url"].endswith("sig=***")


def test_job_lines_carry_route_key_etag_attempt(json_log: io.StringIO, tmp_path: Path) -> None:
    config = make_config({"count": counting_route(tmp_path / "runs")})

    (tmp_path / "bucket").mkdir()

    async def scenario() -> None:
        async with LocalFolderBucket(tmp_path / "bucket") as bucket:
            await put_bytes(bucket, "inputs/count/a.bin", b"data")
            await tick_and_run(bucket, config, tmp_path)

    run(scenario())
    job_lines = [
        line
        for line in _lines(json_log)
        if line["event"] in ("claimed", "job_started", "job_committed")
    ]
    assert {line["event"] for line in job_lines} == {"claimed", "job_started", "job_committed"}
    for line in job_lines:
        assert line["route"] == "count" and line["key"] == "inputs/count/a.bin"
        assert line["etag"] and line["attempt"] == 1
        assert line["timestamp"].endswith("Z")


class _NoParams(HandlerParams):
    pass


class ThreadLoggingHandler:
    """Logs from its worker thread, as handlers and the media toolkit (ffmpeg, probe) do."""

    name: ClassVar[str] = "thread_logging"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type[HandlerParams]] = _NoParams
    extensions: ClassVar[frozenset[str]] = frozenset({".bin"})

    def run(self, ctx: HandlerContext) -> HandlerResult:
        thread = threading.current_thread().name
        ctx.log.info("handler_line", thread=thread)
        structlog.get_logger("handlers.media.somewhere").info("toolkit_line", thread=thread)
        out = ctx.output_dir / "copy.bin"
        shutil.copyfile(ctx.input_path, out)
        return HandlerResult(
            outputs=[OutputFile("copy.bin", out, "copy", "application/octet-stream")]
        )


def test_handler_thread_commit_and_webhook_lines_carry_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One structlog context per job: no logger is handed down, yet every line names the job."""
    stream = io.StringIO()
    configure_logging(json=True, stream=stream, level="DEBUG")  # the commit's line is debug
    monkeypatch.delenv(SECRET_ENV, raising=False)  # the webhook logs "no_secret" and stops
    route = {
        "handler": f"{__name__}:ThreadLoggingHandler",
        "settle_seconds": 0,
        "notify_url": "http://127.0.0.1:9/hook",
    }
    config = make_config({"logged": route})
    (tmp_path / "bucket").mkdir()

    async def scenario() -> None:
        async with LocalFolderBucket(tmp_path / "bucket") as bucket:
            await put_bytes(bucket, "inputs/logged/a.bin", b"data")
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            # The webhook runs in a task started after run() returned.
            await drain_notifications(timeout=10)

    try:
        run(scenario())
    finally:
        configure_logging(json=False)
    by_event = {line["event"]: line for line in _lines(stream)}
    wanted = ("handler_line", "toolkit_line", "feed_record_written", "webhook_no_secret")
    assert set(wanted) <= set(by_event), sorted(by_event)
    assert by_event["handler_line"]["thread"] != threading.main_thread().name
    for event in wanted:
        line = by_event[event]
        assert line["route"] == "logged" and line["key"] == "inputs/logged/a.bin", line
        assert line["etag"] and line["attempt"] == 1 and line["worker"] == "test", line
        assert line["job_id"] == f"logged/a.bin@{line['etag']}", line
    # The context ends with the job: the tick's own lines do not inherit it.
    assert "route" not in structlog.contextvars.get_contextvars()
