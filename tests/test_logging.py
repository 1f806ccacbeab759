from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog

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
