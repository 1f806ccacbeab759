"""The consumer toolkit: what a downstream program needs to use dropgpu's results.

    from handlers.contract.consumer import open_bucket, iter_feed, read_manifest, fetch_outputs

- ``iter_feed``: completions in time order, from the feed under ``_dropgpu/feed/``
  (one LIST per 1,000 new records), once or following;
- ``read_manifest`` / ``wait_for_manifest``: fetch and validate a manifest against
  the published JSON Schema, optionally checking every output's sha256;
- ``fetch_outputs``: download a manifest's outputs, verified, into a folder;
- ``verify_signature``: check a webhook's ``X-Dropgpu-Signature`` header.

Everything is async (one event loop, one bucket client). docs/consumers.md has the
guarantees and a complete example program.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import structlog
from pydantic import ValidationError

from handlers.contract.feed import FeedRecord
from handlers.contract.keys import (
    FEED,
    MANIFEST_NAME,
    JobRef,
    feed_start_key,
    output_file_name,
    parse_feed_key,
    split_input_key,
    unsafe_rel_reason,
)
from handlers.contract.manifest import validate_manifest
from handlers.contract.signature import verify_signature
from infra.errors import DropgpuError
from infra.hashing import sha256_and_size
from infra.storage.bucket import Bucket
from infra.storage.errors import ObjectNotFound
from infra.storage.url import open_bucket

__all__ = [
    "DEFAULT_OVERLAP_S",
    "ConsumerError",
    "FeedCursor",
    "FeedItem",
    "ManifestInvalid",
    "OutputMismatch",
    "fetch_outputs",
    "iter_feed",
    "manifest_key_for",
    "open_bucket",
    "output_dir_for",
    "parse_since",
    "read_manifest",
    "verify_signature",
    "wait_for_manifest",
]

log = structlog.get_logger(__name__)

# How far back (seconds) a consumer re-reads the feed, to catch records that landed
# late with an earlier timestamp (skewed writer clocks, slow or retried PUTs).
DEFAULT_OVERLAP_S = 120.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


class ConsumerError(DropgpuError):
    """A problem a consumer should report in one line (bad argument, bad data)."""


class ManifestInvalid(ConsumerError):
    """The manifest is not valid JSON or breaks the published schema."""


class OutputMismatch(ConsumerError):
    """An output's bytes do not match its manifest (size or sha256)."""


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One completion: where its manifest is, and what it was about."""

    key: str  # the feed key: pass it back as ``since`` to resume after it
    time: datetime  # the time in the key (the committing machine's clock, UTC)
    manifest_key: str
    input_key: str
    route: str
    status: str  # "succeeded" | "failed"
    etag: str  # the input version the manifest describes
    job_id: str
    committed_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "manifest_key": self.manifest_key,
            "input_key": self.input_key,
            "route": self.route,
            "status": self.status,
            "etag": self.etag,
            "job_id": self.job_id,
            "committed_at": self.committed_at,
        }


# -- manifests -------------------------------------------------------------------------


def manifest_key_for(input_key: str) -> str:
    """``inputs/<route>/<rel>`` -> ``outputs/<route>/<rel>/manifest.json``."""
    parts = split_input_key(input_key)
    if parts is None or not parts[1]:
        raise ConsumerError(f"{input_key!r} is not an input key (inputs/<route>/<file>)")
    return JobRef(parts[0], parts[1], "").manifest_key


def output_dir_for(input_key: str) -> PurePosixPath:
    """``<route>/<rel>``: a safe relative folder to mirror a job's outputs into."""
    parts = split_input_key(input_key)
    if parts is None or not parts[1]:
        raise ConsumerError(f"{input_key!r} is not an input key (inputs/<route>/<file>)")
    reason = unsafe_rel_reason(parts[1])
    if reason:
        raise ConsumerError(f"{input_key!r} cannot be a local folder name: {reason}")
    return PurePosixPath(parts[0], parts[1])


def _parse_manifest(body: bytes, key: str) -> dict[str, Any]:
    try:
        return validate_manifest(body)
    except json.JSONDecodeError as exc:
        raise ManifestInvalid(f"{key}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        message = f"{key}: breaks the manifest schema at {where}: {exc.message}"
        raise ManifestInvalid(message) from exc


async def read_manifest(
    bucket: Bucket, key: str, *, verify_outputs: bool = False
) -> dict[str, Any]:
    """Fetch and schema-validate a manifest; with ``verify_outputs``, check every output.

    Raises ObjectNotFound (no manifest yet), ManifestInvalid or OutputMismatch.
    Verifying downloads each output once (to a temporary file) and compares size
    and sha256: only then are the outputs known to be the ones the manifest names.
    """
    manifest = _parse_manifest(await bucket.get_bytes(key), key)
    if verify_outputs:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dropgpu-verify-") as tmp:
            for out in manifest["outputs"]:
                path = Path(tmp) / "output"
                await _download_verified(bucket, out, path)
                path.unlink()
    return manifest


async def wait_for_manifest(
    bucket: Bucket,
    input_key: str,
    *,
    etag: str | None = None,
    timeout: float = 600.0,
    poll: float = 2.0,
    verify_outputs: bool = False,
) -> dict[str, Any]:
    """Poll until the manifest of ``input_key`` exists, then return it (validated).

    With ``etag`` (what your upload returned), wait for the manifest of exactly
    that version: an older version's manifest at the same key is ignored. The
    manifest may say ``failed``; check ``status``. Raises TimeoutError.
    """
    key = manifest_key_for(input_key)
    want = etag.strip('"') if etag else None
    deadline = time.monotonic() + timeout
    while True:
        try:
            manifest = await read_manifest(bucket, key, verify_outputs=False)
        except ObjectNotFound:
            manifest = None
        if manifest is not None and (want is None or manifest["input"]["etag"] == want):
            if verify_outputs:
                manifest = await read_manifest(bucket, key, verify_outputs=True)
            return manifest
        left = deadline - time.monotonic()
        if left <= 0:
            version = f" (etag {want})" if want else ""
            raise TimeoutError(f"no manifest for {input_key}{version} after {timeout:g} s")
        await asyncio.sleep(min(poll, left))


# -- outputs ---------------------------------------------------------------------------


async def _download_verified(bucket: Bucket, out: dict[str, Any], dest: Path) -> None:
    await bucket.get_to_file(out["key"], dest)
    sha256, size = await asyncio.to_thread(sha256_and_size, dest)
    if size != out["size"] or sha256 != out["sha256"]:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise OutputMismatch(
            f"{out['key']}: {size} bytes sha256 {sha256[:12]}…, manifest says {out['size']} "
            f"bytes sha256 {out['sha256'][:12]}… (replaced by a newer run? read the manifest again)"
        )


async def fetch_outputs(
    bucket: Bucket, manifest: dict[str, Any], dest_dir: Path | str, *, roles: Iterable[str] = ()
) -> list[Path]:
    """Download the manifest's outputs (or those with ``roles``) into ``dest_dir``.

    Each file is written under a temporary name, checked against the manifest's
    size and sha256, then renamed: a file in ``dest_dir`` is always complete and
    verified. Raises OutputMismatch, ObjectNotFound.
    """
    dest_dir = Path(dest_dir)
    wanted = set(roles)
    prefix = manifest_key_for(manifest["input"]["key"])[: -len(MANIFEST_NAME)]
    paths: list[Path] = []
    for out in manifest["outputs"]:
        if wanted and out["role"] not in wanted:
            continue
        name = output_file_name(prefix, out["key"]) or ""
        if not _OUTPUT_NAME.fullmatch(name):
            raise ConsumerError(f"{out['key']}: not a plain output name under {prefix}")
        await asyncio.to_thread(dest_dir.mkdir, parents=True, exist_ok=True)
        final = dest_dir / name
        tmp = dest_dir / f".{name}.{os.getpid()}.part"
        await _download_verified(bucket, out, tmp)
        await asyncio.to_thread(os.replace, tmp, final)
        paths.append(final)
    return paths


# -- the feed --------------------------------------------------------------------------


@dataclass(slots=True)
class FeedCursor:
    """Where a consumer is in the feed, saved between runs for exactly-once resumption.

    ``last_key`` is the newest key handled; ``recent`` the keys handled in the
    ``overlap_s`` before it, so the re-read window after a restart yields only the
    records that landed late. Use ``iter_feed(since=c.last_key, seen=c.recent)``.
    """

    last_key: str | None = None
    recent: list[str] = field(default_factory=list)
    overlap_s: float = DEFAULT_OVERLAP_S

    def advance(self, item: FeedItem) -> None:
        """Record ``item`` as handled (call after handling it)."""
        if self.last_key is None or item.key > self.last_key:
            self.last_key = item.key
        if item.key not in self.recent:
            self.recent.append(item.key)
        newest = parse_feed_key(self.last_key)
        if newest is not None:
            floor = newest.time - timedelta(seconds=self.overlap_s)
            self.recent = [
                k for k in self.recent if (fk := parse_feed_key(k)) is not None and fk.time >= floor
            ]

    def to_json(self) -> str:
        return json.dumps({"last_key": self.last_key, "recent": sorted(self.recent)})

    @classmethod
    def from_json(cls, text: str, *, overlap_s: float = DEFAULT_OVERLAP_S) -> FeedCursor:
        try:
            data = json.loads(text)
            last, recent = data.get("last_key"), list(data.get("recent", []))
        except (ValueError, AttributeError, TypeError) as exc:
            raise ConsumerError(f"feed cursor is not valid JSON: {exc}") from exc
        if last is not None and parse_feed_key(str(last)) is None:
            raise ConsumerError(f"feed cursor: {last!r} is not a feed key")
        return cls(last, [str(k) for k in recent], overlap_s)

    @classmethod
    def load(cls, path: Path | str, *, overlap_s: float = DEFAULT_OVERLAP_S) -> FeedCursor:
        """The cursor saved at ``path``, or a fresh one (start of the feed) if none."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(overlap_s=overlap_s)
        return cls.from_json(text, overlap_s=overlap_s)

    def save(self, path: Path | str) -> None:
        """Write atomically: a crash leaves the old cursor or the new one, never half."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)


def _parse_time(value: str) -> datetime | None:
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def parse_since(value: str | datetime, *, now: datetime | None = None) -> datetime | str:
    """A ``since`` argument as a UTC time or a feed key.

    Accepts a feed key (``_dropgpu/feed/...json``, or just its name), an ISO-8601
    time (naive means UTC), ``now``, or a duration ago: ``90s``, ``15m``, ``2h``, ``7d``.
    """
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = value.strip()
    key = text if text.startswith(FEED) else FEED + text
    if parse_feed_key(key):
        return key
    now = now or datetime.now(UTC)
    if text == "now":
        return now
    m = _DURATION.fullmatch(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    ts = _parse_time(text)
    if ts is None:
        raise ConsumerError(
            f"--since {value!r}: expected a feed key, an ISO time (2025-01-31T12:00:00Z), "
            "'now', or a duration ago (15m, 2h, 7d)"
        )
    return ts


def _floor_ms(ts: datetime) -> datetime:
    # Key times have millisecond precision; a cursor must not fall inside one.
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


async def _read_item(bucket: Bucket, key: str, time_: datetime) -> FeedItem | None:
    try:
        record = FeedRecord.model_validate_json(await bucket.get_bytes(key))
    except ObjectNotFound:
        return None  # expired by a lifecycle rule between LIST and GET
    except ValidationError as exc:
        log.warning("feed_record_unreadable_skipped", key=key, error=str(exc).splitlines()[0])
        return None
    return FeedItem(
        key=key,
        time=time_,
        manifest_key=record.manifest_key,
        input_key=record.input_key,
        route=record.route,
        status=record.status,
        etag=record.etag,
        job_id=record.job_id,
        committed_at=record.committed_at,
    )


async def iter_feed(
    bucket: Bucket,
    *,
    since: str | datetime | None = None,
    route: str | None = None,
    follow: bool = False,
    poll: float = 5.0,
    overlap_s: float = DEFAULT_OVERLAP_S,
    seen: Iterable[str] = (),
) -> AsyncIterator[FeedItem]:
    """Completions in key (= time) order; with ``follow``, keep polling for new ones.

    ``since``: None (every record kept in the bucket), a time (records at or after
    it), or a feed key (resume: records after it, plus a re-read of the
    ``overlap_s`` before it, because a record can land late with an earlier
    timestamp). Re-read records are yielded again unless their key is in ``seen``,
    so resuming from a bare key is at-least-once; keep the keys of the last
    ``overlap_s`` to make it exactly-once. Within one call no key is yielded twice.

    While following, each poll lists from ``min(newest record, store clock) -
    overlap_s``: a record is never missed when it becomes visible less than
    ``overlap_s`` after the time in its key (measured on the store's clock).
    """
    if route is not None and not route:
        raise ConsumerError("route must not be empty")
    overlap = timedelta(seconds=max(0.0, overlap_s))
    start = parse_since(since) if since is not None else None
    # Keys already yielded (or known to the caller), with their key time: the dedupe
    # set for the overlap window. Older entries are dropped as the window moves.
    recent: dict[str, datetime] = {}
    for key in seen:
        fk = parse_feed_key(key)
        if fk:
            recent[key] = fk.time
    cursor_time: datetime | None = None
    resume = parse_feed_key(start) if isinstance(start, str) else None
    if resume is not None:
        cursor_time = _floor_ms(resume.time - overlap)
        recent.setdefault(resume.key, resume.time)  # the resume key itself was handled
    elif isinstance(start, datetime):
        cursor_time = start
    newest: datetime | None = None
    while True:
        after = feed_start_key(cursor_time) if cursor_time else None
        listing = await bucket.list(FEED, start_after=after)
        for obj in listing.objects:
            fk = parse_feed_key(obj.key)
            if fk is None or obj.key in recent:
                continue
            recent[obj.key] = fk.time
            newest = fk.time if newest is None else max(newest, fk.time)
            if route is not None and fk.route != route:
                continue
            item = await _read_item(bucket, obj.key, fk.time)
            if item is not None:
                yield item
        if not follow:
            return
        if newest is not None:
            # Never past the store's clock: one writer with a clock far ahead must
            # not move everyone's window beyond records still to come.
            moved = _floor_ms(min(newest, listing.server_time) - overlap)
            if cursor_time is None or moved > cursor_time:
                cursor_time = moved
                recent = {k: t for k, t in recent.items() if t >= cursor_time}
        await asyncio.sleep(poll)
