"""Bucket layout (DESIGN §1, §3): where inputs, outputs and internal state live.

A job is one version of one input, ``(route, rel, etag)``. Its internal keys are
built from a job id that is readable when it can be (``vertical/clip.mp4@<etag>``)
and hashed when the input key is long or unsafe, so that every internal key stays
far below S3's 1,024-byte limit. Job ids are only ever computed forward from a
listing, never parsed back into input keys.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

INPUTS = "inputs/"
OUTPUTS = "outputs/"
INTERNAL = "_dropgpu/"
CLAIMS = f"{INTERNAL}claims/"
DONE = f"{INTERNAL}done/"
FAILED = f"{INTERNAL}failed/"
# The per-route done index (watcher/done_index.py): <route>/<generation>.json.gz.
INDEX = f"{INTERNAL}index/"
MANIFEST_NAME = "manifest.json"
MAX_KEY_BYTES = 1024
# Output names are [A-Za-z0-9][A-Za-z0-9._-]{0,39} (the runner checks them).
MAX_OUTPUT_NAME_BYTES = 40
# "<job hash>-<attempt>": the folder one attempt's outputs are uploaded to.
_VERSION_DIR = re.compile(r"^[0-9a-f]{24}-[0-9]{1,6}$")
_MAX_VERSION_DIR_BYTES = 24 + 1 + 6
# Room for "_dropgpu/claims/" + "/attempt-NNN.failed-<13 digits>".
_MAX_READABLE_JOB_BYTES = 600
_MAX_SEGMENT_BYTES = 255
_SAFE_ETAG = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RESET_NAME = "reset"
_CLAIM_NAME = re.compile(r"^attempt-(\d{1,6})(?:\.(failed)-(\d{1,16})|\.(released))?$")


def unsafe_rel_reason(rel: str) -> str | None:
    """Why ``rel`` must not be processed, or None when it is fine.

    Keys are opaque to S3, but downstream tools (rclone, aws s3 sync) map keys
    onto file paths, so outputs must never be written under '..' segments.
    """
    if not rel:
        return "empty file name"
    if _CONTROL.search(rel):
        return "control characters in the object key"
    if "\\" in rel:
        return "backslash in the object key"
    if rel.startswith("/") or rel.endswith("/") or "//" in rel:
        return "object key has an empty path segment ('//')"
    for segment in rel.split("/"):
        if segment in (".", ".."):
            return f"object key contains a {segment!r} path segment"
    return None


def _etag_token(etag: str) -> str:
    if _SAFE_ETAG.fullmatch(etag):
        return etag
    return "h" + hashlib.sha256(etag.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class JobRef:
    """One version of one input, and every key derived from it."""

    route: str
    rel: str  # input key without "inputs/<route>/", file name included
    etag: str

    @property
    def input_key(self) -> str:
        return f"{INPUTS}{self.route}/{self.rel}"

    @property
    def job_id(self) -> str:
        token = _etag_token(self.etag)
        readable = f"{self.route}/{self.rel}@{token}"
        if (
            unsafe_rel_reason(self.rel) is None
            and len(readable.encode()) <= _MAX_READABLE_JOB_BYTES
            # "@<etag>" lengthens the last segment; filesystems and SeaweedFS cap one
            # path segment at 255 bytes, so such a name must be hashed too.
            and all(len(seg.encode()) <= _MAX_SEGMENT_BYTES for seg in readable.split("/"))
        ):
            return readable
        digest = hashlib.sha256(self.rel.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"{self.route}/#{digest}@{token}"

    @property
    def job_hash(self) -> str:
        """Stable short hash used for scratch directory names (never key text)."""
        return job_hash_of(self.job_id)

    @property
    def output_prefix(self) -> str:
        return f"{OUTPUTS}{self.route}/{self.rel}/"

    @property
    def manifest_key(self) -> str:
        return f"{self.output_prefix}{MANIFEST_NAME}"

    def version_dir(self, attempt: int) -> str:
        """``<job hash>-<attempt>``: the folder under ``output_prefix`` one attempt uploads to.

        The job hash covers the ETag, so outputs of different input versions never
        share a key: a superseded job finishing late cannot overwrite the newer
        version's files. The attempt keeps two attempts of one version apart too, so
        an attempt that does not publish can delete what it uploaded.
        """
        return f"{self.job_hash}-{attempt}"

    def output_key(self, name: str, attempt: int) -> str:
        return f"{self.output_prefix}{self.version_dir(attempt)}/{name}"

    def manifest_key_fits(self) -> bool:
        """Do the manifest and every output key of this job stay within S3's key limit?"""
        longest = max(len(MANIFEST_NAME), _MAX_VERSION_DIR_BYTES + 1 + MAX_OUTPUT_NAME_BYTES)
        return len(self.output_prefix.encode()) + longest <= MAX_KEY_BYTES

    @property
    def done_key(self) -> str:
        return f"{DONE}{self.job_id}"

    @property
    def failed_index_key(self) -> str:
        return f"{FAILED}{self.job_id}"

    @property
    def claims_prefix(self) -> str:
        return f"{CLAIMS}{self.job_id}/"

    def claim_key(self, attempt: int) -> str:
        return f"{self.claims_prefix}attempt-{attempt}"

    def failure_key(self, attempt: int, retry_at_ms: int) -> str:
        return f"{self.claims_prefix}attempt-{attempt}.failed-{retry_at_ms}"

    def released_key(self, attempt: int) -> str:
        return f"{self.claims_prefix}attempt-{attempt}.released"

    @property
    def reset_key(self) -> str:
        """Written by ``dropgpu retry``: run again although the done index lists the job."""
        return f"{self.claims_prefix}{_RESET_NAME}"


class ClaimKind(StrEnum):
    """What a key under ``_dropgpu/claims/<job id>/`` records about one attempt."""

    CLAIM = "claim"  # attempt-n: the claim, rewritten by the lease's heartbeats
    FAILED = "failed"  # attempt-n.failed-<retry at, ms>: a transient failure, retry then
    RELEASED = "released"  # attempt-n.released: given back unfinished; does not use a try
    RESET = "reset"  # reset: `dropgpu retry` asked for a new run (outranks the done index)


@dataclass(frozen=True, slots=True)
class ClaimKey:
    """A parsed key under _dropgpu/claims/."""

    job_id: str
    attempt: int
    kind: ClaimKind
    retry_at_ms: int | None = None


def parse_claim_key(key: str) -> ClaimKey | None:
    if not key.startswith(CLAIMS):
        return None
    job_id, sep, name = key[len(CLAIMS) :].rpartition("/")
    if sep and name == _RESET_NAME:
        return ClaimKey(job_id, 0, ClaimKind.RESET)
    m = _CLAIM_NAME.fullmatch(name)
    if not sep or not m:
        return None
    attempt = int(m.group(1))
    if m.group(2):
        return ClaimKey(job_id, attempt, ClaimKind.FAILED, int(m.group(3)))
    if m.group(4):
        return ClaimKey(job_id, attempt, ClaimKind.RELEASED)
    return ClaimKey(job_id, attempt, ClaimKind.CLAIM)


def output_file_name(output_prefix: str, key: str) -> str | None:
    """The file name of output ``key`` of the job whose outputs live under ``output_prefix``.

    Outputs are ``<prefix><job hash>-<attempt>/<name>``; manifests written before
    version folders existed list ``<prefix><name>``. None for any other key.
    """
    if not key.startswith(output_prefix):
        return None
    folder, sep, name = key[len(output_prefix) :].rpartition("/")
    if sep and not _VERSION_DIR.fullmatch(folder):
        return None
    return name or None


def split_input_key(key: str) -> tuple[str, str] | None:
    """``inputs/<route>/<rel>`` -> (route, rel); None for anything else."""
    if not key.startswith(INPUTS):
        return None
    route, sep, rel = key[len(INPUTS) :].partition("/")
    if not sep or not route:
        return None
    return route, rel


# -- downstream consumers: completion feed and webhook delivery records --------------

FEED = f"{INTERNAL}feed/"
WEBHOOKS = f"{INTERNAL}webhooks/"
# Fixed width, so lexical key order is time order (and S3 StartAfter works on it).
FEED_TIME_FORMAT = "%Y%m%dT%H%M%S"
_FEED_NAME = re.compile(r"^(\d{8}T\d{6}\.\d{3}Z)-([0-9a-f]{24})-([a-z0-9][a-z0-9_-]{0,62})\.json$")


def feed_time_token(ts: datetime) -> str:
    """``20250102T030405.678Z``: UTC, millisecond precision, fixed width."""
    ts = ts.astimezone(UTC)
    return f"{ts.strftime(FEED_TIME_FORMAT)}.{ts.microsecond // 1000:03d}Z"


def feed_key(ref: JobRef, committed_at: datetime) -> str:
    """``_dropgpu/feed/<time>-<job hash>-<route>.json``.

    The route is in the name so a consumer of one route skips the others'
    records without a GET; the job hash keeps same-millisecond records apart.
    """
    return f"{FEED}{feed_time_token(committed_at)}-{ref.job_hash}-{ref.route}.json"


@dataclass(frozen=True, slots=True)
class FeedKey:
    key: str
    time: datetime
    job_hash: str
    route: str


def parse_feed_key(key: str) -> FeedKey | None:
    """A parsed feed key, or None for anything else under (or outside) the feed prefix."""
    if not key.startswith(FEED):
        return None
    m = _FEED_NAME.fullmatch(key[len(FEED) :])
    if not m:
        return None
    try:
        time = datetime.strptime(m.group(1), f"{FEED_TIME_FORMAT}.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return FeedKey(key, time, m.group(2), m.group(3))


def feed_start_key(ts: datetime) -> str:
    """A StartAfter cursor that lists every feed record at or after ``ts``."""
    # "<time>" sorts before "<time>-<hash>...", so records at exactly ts are kept.
    return f"{FEED}{feed_time_token(ts)}"


def webhook_record_key(ref: JobRef) -> str:
    """Where the delivery record of a job's webhook is written."""
    return f"{WEBHOOKS}{ref.job_id}.json"


# -- the done index -----------------------------------------------------------------

_INDEX_NAME = re.compile(r"^([0-9]{12})\.json\.gz$")


def index_key(route: str, generation: int) -> str:
    """``_dropgpu/index/<route>/<generation, 12 digits>.json.gz``: key order is age order."""
    return f"{INDEX}{route}/{generation:012d}.json.gz"


def parse_index_key(key: str) -> tuple[str, int] | None:
    """(route, generation) of an index key; None for anything else."""
    if not key.startswith(INDEX):
        return None
    route, sep, name = key[len(INDEX) :].partition("/")
    m = _INDEX_NAME.fullmatch(name)
    if not sep or not route or not m:
        return None
    return route, int(m.group(1))


def job_hash_of(job_id: str) -> str:
    """:attr:`JobRef.job_hash` from a job id alone (feed keys carry only the hash)."""
    return hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
