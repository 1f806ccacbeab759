"""Retrying a storage call a few times on transient faults, with capped backoff (equal jitter).

botocore already retries each request (adaptive mode); this covers the commit
steps, where giving up half-way would leave work for the repair path.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from infra.storage.errors import TransientStorageError

T = TypeVar("T")


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Capped exponential backoff with equal jitter: never zero, never above cap.

    The ceiling doubles per attempt up to ``cap``; the delay is half the ceiling
    plus a uniform random part of up to the other half. Used for storage calls,
    job retries (failures.py) and webhook attempts (webhooks.py).
    """
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


async def with_storage_retries(
    call: Callable[[], Awaitable[T]], *, tries: int = 4, base: float = 0.2, cap: float = 3.0
) -> T:
    for attempt in range(1, tries + 1):
        try:
            return await call()
        except TransientStorageError:
            if attempt == tries:
                raise
            await asyncio.sleep(backoff_delay(attempt, base, cap))
    raise AssertionError("unreachable")
