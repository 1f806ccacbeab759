"""Signed webhooks against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from handlers.contract.consumer import read_manifest
from handlers.contract.keys import JobRef, webhook_record_key
from handlers.contract.signature import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    sign,
    verify_signature,
)
from handlers.jobs import webhooks
from handlers.jobs.webhooks import (
    SECRET_ENV,
    WebhookPolicy,
    deliver,
    drain_notifications,
)
from infra.log import configure_logging
from tests.conftest import BucketSpec
from tests.pipeline_helpers import counting_route, make_config, put_bytes, run, tick_and_run

SECRET = "whsec-test-only"
FAST = WebhookPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.02, max_total_s=10)
BODY = b'{"schema_version": 1, "status": "succeeded"}\n'


@dataclass
class Receiver:
    """Answers each POST with the next status of ``script`` (the last one repeats)."""

    script: list[int]
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.script[min(len(self.requests), len(self.script)) - 1]
        headers = {"Retry-After": "0"} if status == 429 else {}
        return web.Response(status=status, text="ok" if status < 300 else "no", headers=headers)


@asynccontextmanager
async def receiver(*script: int) -> AsyncIterator[Receiver]:
    rec = Receiver(list(script))
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # loopback only, a free port
    site = web.SockSite(runner, sock)
    await site.start()
    rec.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook?token=secret-in-query"
    try:
        yield rec
    finally:
        await runner.cleanup()


def test_signature_verifies_and_rejects_tampering() -> None:
    async def scenario() -> None:
        async with receiver(200) as rec:
            result = await deliver(BODY, rec.url, SECRET, job_id="count/a.bin@e1", policy=FAST)
        assert result.result == "delivered" and len(result.attempts) == 1
        headers, body = rec.requests[0]
        assert body == BODY
        assert headers[EVENT_HEADER] == "job.completed"
        assert headers["Content-Type"] == "application/json"
        assert headers[DELIVERY_HEADER] == result.delivery_id
        sig = headers[SIGNATURE_HEADER]
        assert verify_signature(SECRET, sig, body)
        assert not verify_signature("another secret", sig, body)
        assert not verify_signature(SECRET, sig, body + b" ")
        assert not verify_signature(SECRET, None, body)
        assert not verify_signature(SECRET, "v1=deadbeef", body)
        # A captured request cannot be replayed after the tolerance window.
        assert not verify_signature(SECRET, sig, body, now=time.time() + 3600)
        # The record never shows the query string (it may hold a token).
        assert "secret-in-query" not in result.model_dump_json()

    run(scenario())


def test_sign_is_hmac_sha256_over_timestamp_and_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, BODY) == f"t=1700000000,v1={expected}"


def test_retries_on_500_and_429_then_delivers() -> None:
    async def scenario() -> None:
        async with receiver(500, 503, 429, 200) as rec:
            result = await deliver(BODY, rec.url, SECRET, job_id="j", policy=FAST)
        assert result.result == "delivered"
        assert [a.status for a in result.attempts] == [500, 503, 429, 200]
        ids = {h[DELIVERY_HEADER] for h, _ in rec.requests}
        assert len(ids) == 1  # one delivery id across retries: receivers can dedupe
        assert all(verify_signature(SECRET, h[SIGNATURE_HEADER], b) for h, b in rec.requests)

    run(scenario())


def test_gives_up_cleanly() -> None:
    async def scenario() -> None:
        async with receiver(500) as rec:
            result = await deliver(BODY, rec.url, SECRET, job_id="j", policy=FAST)
            assert result.result == "gave_up"
            assert len(rec.requests) == FAST.max_attempts
            assert result.message == "gave up after 4 attempt(s); last: HTTP 500"
        # Nobody listening: connection errors are retried the same way, then given up.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        result = await deliver(BODY, f"http://127.0.0.1:{port}/", SECRET, job_id="j", policy=FAST)
        assert result.result == "gave_up" and len(result.attempts) == FAST.max_attempts
        assert all(a.status is None and a.error for a in result.attempts)
        # The total time bound holds even with generous per-attempt settings.
        tight = WebhookPolicy(max_attempts=50, base_delay_s=0.05, max_delay_s=0.05, max_total_s=0.3)
        async with receiver(500) as rec:
            result = await deliver(BODY, rec.url, SECRET, job_id="j", policy=tight)
        assert result.result == "gave_up" and len(result.attempts) < 50

    run(scenario())


def test_4xx_is_final_and_no_secret_sends_nothing() -> None:
    async def scenario() -> None:
        async with receiver(401) as rec:
            result = await deliver(BODY, rec.url, SECRET, job_id="j", policy=FAST)
            assert result.result == "rejected" and len(rec.requests) == 1
            result = await deliver(BODY, rec.url, None, job_id="j", policy=FAST)
            assert result.result == "no_secret" and len(rec.requests) == 1
            assert SECRET_ENV in result.message

    run(scenario())


@pytest.mark.parametrize("script", [[200], [500]], ids=["ok", "failing"])
def test_jobs_notify_after_commit_and_a_failing_endpoint_never_fails_them(
    target: BucketSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: list[int]
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setattr(webhooks, "DEFAULT_POLICY", FAST)

    async def scenario() -> None:
        async with receiver(*script) as rec, target.open() as bucket:
            route = counting_route(tmp_path / "runs", notify_url=rec.url)
            config = make_config({"count": route})
            etag = await put_bytes(bucket, "inputs/count/a.bin", b"aaa")
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            await drain_notifications(timeout=20)
            manifest_key = "outputs/count/a.bin/manifest.json"
            manifest_bytes = await bucket.get_bytes(manifest_key)
            await read_manifest(bucket, manifest_key, verify_outputs=True)
            headers, body = rec.requests[0]
            assert body == manifest_bytes
            assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)
            record_key = webhook_record_key(JobRef("count", "a.bin", etag))
            record = json.loads(await bucket.get_bytes(record_key))
            assert record["job_id"] == json.loads(manifest_bytes)["job_id"]
            if script == [200]:
                assert record["result"] == "delivered"
            else:
                assert record["result"] == "gave_up"
                assert [a["status"] for a in record["attempts"]] == [500] * FAST.max_attempts

    run(scenario())


def test_drain_waits_for_pending_deliveries(
    target: BucketSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setattr(webhooks, "DEFAULT_POLICY", FAST)

    async def scenario() -> None:
        async with receiver(503, 200) as rec, target.open() as bucket:
            ref = JobRef("count", "x.bin", "e1")
            task = webhooks.notify_in_background(bucket, ref, BODY, rec.url)
            assert task is not None and not task.done()  # returned at once
            assert webhooks.notify_in_background(bucket, ref, BODY, None) is None
            assert await drain_notifications(timeout=20) == 1
            assert task.done() and len(rec.requests) == 2
            record = json.loads(await bucket.get_bytes(webhook_record_key(ref)))
            assert record["result"] == "delivered"
            assert await drain_notifications() == 0

    run(scenario())


def test_drain_timeout_cancels_slow_deliveries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    slow = WebhookPolicy(max_attempts=100, base_delay_s=5, max_delay_s=5, max_total_s=60)
    monkeypatch.setattr(webhooks, "DEFAULT_POLICY", slow)

    async def scenario() -> None:
        async with receiver(500) as rec, BucketSpec("local", str(tmp_path)).open() as bucket:
            ref = JobRef("count", "x.bin", "e1")
            webhooks.notify_in_background(bucket, ref, BODY, rec.url)
            await asyncio.sleep(0.2)
            assert await drain_notifications(timeout=0.1) == 1  # cut short, not hung

    run(scenario())


@asynccontextmanager
async def garbage_server(reply: bytes) -> AsyncIterator[str]:
    """A raw TCP server that answers every request with ``reply`` (not HTTP) and hangs up."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook?token={TOKEN}"
    finally:
        server.close()
        await server.wait_closed()


TOKEN = "tok-e3b0c44298fc1c149afbf4c8996fb924"


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-status", "bad-chunk"],
)
def test_a_malformed_reply_never_leaks_the_url_token(
    target: BucketSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reply: bytes
) -> None:
    """aiohttp's error text quotes the full URL; neither the record nor a log line may."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setattr(webhooks, "DEFAULT_POLICY", FAST)
    stream = io.StringIO()
    configure_logging(json=True, level="DEBUG", stream=stream)

    async def scenario() -> None:
        async with garbage_server(reply) as url, target.open() as bucket:
            config = make_config({"count": counting_route(tmp_path / "runs", notify_url=url)})
            etag = await put_bytes(bucket, "inputs/count/a.bin", b"aaa")
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded"]
            await drain_notifications(timeout=20)
            record_key = webhook_record_key(JobRef("count", "a.bin", etag))
            record = json.loads(await bucket.get_bytes(record_key))
            assert record["result"] == "gave_up"
            errors = [a["error"] for a in record["attempts"]]
            assert len(errors) == FAST.max_attempts and all(errors)
            assert "127.0.0.1" in errors[0]  # still says where it failed
            for obj in (await bucket.list("")).objects:  # nothing in the bucket holds it
                assert TOKEN.encode() not in await bucket.get_bytes(obj.key), obj.key

    try:
        run(scenario())
    finally:
        configure_logging(json=False)
    logged = stream.getvalue()
    assert "webhook_gave_up" in logged
    assert TOKEN not in logged
