"""A fault-injecting S3 reverse proxy on 127.0.0.1, for reliability tests.

It sits between dropgpu (or any S3 client) and a real S3 endpoint (the SeaweedFS
fixture) and, per request, with a seeded RNG, either forwards it untouched or
injects one fault:

- ``error500``: HTTP 500 ``InternalError`` (S3 XML body), request not forwarded;
- ``slowdown``: HTTP 503 ``SlowDown`` (S3 XML body), request not forwarded;
- ``reset``: the connection is aborted (TCP RST-like) with no answer. Half of the
  resets (``reset_after_upstream_fraction``) happen *after* the upstream store
  applied the request: the write happened, the client never hears of it, the
  nastiest case for create-if-absent;
- ``slow``: the answer is delayed by ``slow_s`` seconds, then forwarded;
- ``truncate``: the upstream answer's status and headers (its full Content-Length)
  are sent, then only part of the body, then the connection is closed. Only
  answers with a body of at least 2 bytes can be truncated; others pass.

The Host header and every other end-to-end header (SigV4 ``Authorization``,
``x-amz-*``, ``If-None-Match``, ``If-Match``, ``Content-MD5``...) are forwarded as
sent, so signatures computed for the proxy's address still verify upstream.
Bodies are streamed both ways, never buffered whole.

Runs in a background thread with its own event loop, so the test process and
subprocess watchers (``--endpoint-url proxy.endpoint_url``) can all use it::

    with FaultProxy(upstream, FaultRates(slowdown=0.05), seed=1) as proxy:
        ... proxy.endpoint_url ... proxy.counts["slowdown"]
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

log = structlog.get_logger(__name__)

FAULTS = ("error500", "slowdown", "reset", "slow", "truncate")
# Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded; aiohttp sets its own.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_CHUNK = 256 * 1024

_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message>"
    "<Resource>{resource}</Resource><RequestId>fault-proxy</RequestId></Error>"
)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Per-request probabilities (their sum must be <= 1); ``methods`` limits which."""

    error500: float = 0.0
    slowdown: float = 0.0
    reset: float = 0.0
    slow: float = 0.0
    truncate: float = 0.0
    slow_s: float = 1.0
    reset_after_upstream_fraction: float = 0.5
    methods: frozenset[str] | None = None  # e.g. frozenset({"GET"}); None = all
    max_faults: int | None = None  # stop injecting after this many faults (all types)

    def __post_init__(self) -> None:
        total = sum(getattr(self, f) for f in FAULTS)
        if any(getattr(self, f) < 0 for f in FAULTS) or total > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1 (got {total})")

    @classmethod
    def uniform(cls, total: float, **kw: Any) -> FaultRates:
        """``total`` spread evenly over the five fault types."""
        each = total / len(FAULTS)
        return cls(**{f: each for f in FAULTS}, **kw)


class FaultProxy:
    def __init__(self, upstream: str, rates: FaultRates | None = None, *, seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.rates = rates or FaultRates()
        self._rng = random.Random(seed)
        self.counts: Counter[str] = Counter()  # injected faults by type, plus "requests"
        self.port = 0
        self.endpoint_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(15):
            raise RuntimeError("fault proxy did not start")
        if self._error:
            raise RuntimeError(f"fault proxy failed to start: {self._error}")

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start_server())
        except BaseException as e:  # reported to start()
            self._error = e
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _start_server(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=256),
        )
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        log.info("fault_proxy_ready", endpoint=self.endpoint_url, upstream=self.upstream)

    async def _shutdown(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._loop = self._thread = None

    def set_rates(self, rates: FaultRates) -> None:
        """Change the rates while running (e.g. faults off for a final check)."""
        self.rates = rates

    def disable(self) -> None:
        self.rates = replace(FaultRates(), slow_s=self.rates.slow_s)

    def injected(self) -> dict[str, int]:
        with self._lock:
            return {f: self.counts.get(f, 0) for f in FAULTS} | {
                "requests": self.counts.get("requests", 0),
                "reset_after_upstream": self.counts.get("reset_after_upstream", 0),
            }

    # -- one request ----------------------------------------------------------------------

    def _pick(self, method: str) -> str | None:
        rates = self.rates
        if rates.methods is not None and method not in rates.methods:
            return None
        with self._lock:
            x = self._rng.random()
            injected = sum(self.counts.get(f, 0) for f in FAULTS)
        if rates.max_faults is not None and injected >= rates.max_faults:
            return None
        for fault in FAULTS:
            p = getattr(rates, fault)
            if x < p:
                return fault
            x -= p
        return None

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    @staticmethod
    def _err(status: int, code: str, message: str, resource: str) -> web.Response:
        body = _ERROR_XML.format(code=code, message=message, resource=resource)
        return web.Response(status=status, body=body.encode(), content_type="application/xml")

    @staticmethod
    def _abort(request: web.BaseRequest) -> web.Response:
        if request.transport is not None:
            request.transport.abort()
        # Nothing reaches the client: its connection is gone.
        return web.Response(status=500)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._count("requests")
        fault = self._pick(request.method)
        rates = self.rates
        if fault == "error500":
            self._count(fault)
            return self._err(500, "InternalError", "injected by fault proxy", request.path)
        if fault == "slowdown":
            self._count(fault)
            return self._err(503, "SlowDown", "Please reduce your request rate.", request.path)
        reset_after = False
        if fault == "reset":
            with self._lock:
                reset_after = self._rng.random() < rates.reset_after_upstream_fraction
            self._count(fault)
            if not reset_after:
                return self._abort(request)
            self._count("reset_after_upstream")
        if fault == "slow":
            self._count(fault)
            await asyncio.sleep(rates.slow_s)
        try:
            return await self._forward(request, truncate=fault == "truncate", reset=reset_after)
        except ConnectionResetError:  # the client went away (killed, timed out)
            return web.Response(status=499)

    async def _forward(
        self, request: web.Request, *, truncate: bool, reset: bool
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        # Keep Host as the client signed it (SigV4 covers it); aiohttp sends ours.
        headers["Host"] = request.headers.get("Host", urlsplit(self.upstream).netloc)
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        data: Any = None
        if request.body_exists:

            async def body() -> Any:
                async for chunk in request.content.iter_chunked(_CHUNK):
                    yield chunk

            data = body()
            if chunked:
                headers.pop("Content-Length", None)
        # The raw path and query, exactly as the client encoded (and signed) them.
        url = URL(self.upstream + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        except (aiohttp.ClientError, OSError) as e:
            log.warning("fault_proxy_upstream_error", error=str(e))
            return self._err(502, "InternalError", f"proxy upstream error: {e}", request.path)
        async with upstream:
            if reset:
                await upstream.read()  # the store applied it; the client never hears back
                return self._abort(request)
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
            }
            length = upstream.content_length
            if truncate and length is not None and length >= 2 and request.method != "HEAD":
                self._count("truncate")
                resp = web.StreamResponse(status=upstream.status, headers=out_headers)
                await resp.prepare(request)
                keep = self._truncated_length(length)
                sent = 0
                while sent < keep:
                    chunk = await upstream.content.read(min(_CHUNK, keep - sent))
                    if not chunk:
                        break
                    await resp.write(chunk)
                    sent += len(chunk)
                with contextlib.suppress(Exception):
                    await request.writer.drain()  # type: ignore[union-attr]
                return self._abort(request)
            resp = web.StreamResponse(status=upstream.status, headers=out_headers)
            if length is not None:
                resp.content_length = length
            await resp.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await resp.write(chunk)
            await resp.write_eof()
            return resp

    def _truncated_length(self, length: int) -> int:
        with self._lock:
            return self._rng.randint(0, length - 1)
