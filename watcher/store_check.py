"""Prove the store honours create-if-absent before trusting it with claims.

Some S3-compatible stores ignore If-None-Match and let a second create win;
on such a store two watchers would both process a file. `dropgpu doctor` runs
the full check; `dropgpu watch` runs it at start-up and refuses an unsafe store.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from handlers.contract.keys import INTERNAL
from infra.storage.bucket import Bucket


@dataclass(frozen=True, slots=True)
class StoreCheck:
    safe: bool
    detail: str


async def check_create_only(bucket: Bucket, *, concurrent: int = 8) -> StoreCheck:
    probe = f"{INTERNAL}doctor/{uuid.uuid4().hex}"
    keys = [f"{probe}/sequential", f"{probe}/concurrent"]
    try:
        first = await bucket.create_if_absent(keys[0], b"first")
        second = await bucket.create_if_absent(keys[0], b"second")
        if not first:
            return StoreCheck(False, "a create-if-absent of a new key was refused")
        if second:
            return StoreCheck(
                False,
                "the store accepted a second create-if-absent of the same key "
                "(If-None-Match: * is ignored); dropgpu cannot guarantee exactly-once here",
            )
        if concurrent > 1:
            wins = await asyncio.gather(
                *(bucket.create_if_absent(keys[1], f"{i}".encode()) for i in range(concurrent))
            )
            if sum(wins) != 1:
                won = sum(wins)
                return StoreCheck(
                    False,
                    f"{won} of {concurrent} concurrent create-if-absent calls won (expected 1)",
                )
        return StoreCheck(True, "second create-if-absent rejected (412)")
    finally:
        for key in keys:
            # Cleanup of a probe object is best effort.
            with contextlib.suppress(Exception):
                await bucket.delete(key)
