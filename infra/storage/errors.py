"""Errors raised by the adapters to the outside world (buckets, logging, servers)."""

from __future__ import annotations

from infra.errors import DropgpuError


class BucketError(DropgpuError):
    """Base class for every storage error."""


class BucketConfigError(BucketError):
    """The bucket cannot be used as configured (bad URL, missing bucket, denied).

    Retrying does not help: the message says what the user must change.
    """


class UnsafeKeyError(BucketError):
    """A key cannot be stored safely by this backend (e.g. '..' on a local folder)."""


class ObjectNotFound(BucketError):
    """The object does not exist (any more)."""


class PreconditionFailed(BucketError):
    """An If-Match (or If-None-Match) condition did not hold: the object changed."""


class TransientStorageError(BucketError):
    """A storage fault worth retrying later: 5xx, throttling, timeouts, resets."""
