"""Webhook signatures (the receiving side's contract, docs/consumers.md).

``X-Dropgpu-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
The sender (handlers/jobs/webhooks.py) and receivers (the consumer toolkit, or
any program) share this module.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Dropgpu-Signature"
EVENT_HEADER = "X-Dropgpu-Event"
DELIVERY_HEADER = "X-Dropgpu-Delivery"
EVENT_COMPLETED = "job.completed"
# How old a signature timestamp a receiver accepts by default (replay window).
DEFAULT_TOLERANCE_S = 300.0


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Dropgpu-Signature`` header value for ``body`` at ``timestamp``."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when ``header`` is a valid, fresh signature of ``body`` (for receivers).

    Compares in constant time; rejects timestamps more than ``tolerance_s`` away
    from ``now`` so a captured request cannot be replayed later.
    """
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(name, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    # Several v1 values may be present while a receiver rotates secrets.
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))
