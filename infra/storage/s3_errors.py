"""How an S3 failure becomes one of dropgpu's storage errors: pure, no client, no I/O.

botocore and aiohttp raise their own exceptions (a ClientError carrying the
store's code and HTTP status, connection and timeout errors, credential errors).
``map_s3_error`` turns each into the infra.storage.errors class the callers act
on: retrying cannot fix a BucketConfigError (its message says what to change), a
TransientStorageError is worth retrying later (botocore's own adaptive retries
are already spent), ObjectNotFound and PreconditionFailed are answers about one
object. Messages never contain credentials: only codes, names and the redacted
endpoint.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from botocore import exceptions as bce

from infra.storage.errors import (
    BucketConfigError,
    BucketError,
    ObjectNotFound,
    PreconditionFailed,
    TransientStorageError,
    UnsafeKeyError,
)

THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "NoSuchUpload",  # an upload aborted under us: redo the whole put
    }
)
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    bce.ReadTimeoutError,
    bce.ConnectionClosedError,
    bce.ResponseStreamingError,
    bce.IncompleteReadError,
    bce.HTTPClientError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)
# Failures reaching the endpoint at all: a config problem until it has answered once.
UNREACHABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    bce.EndpointConnectionError,
    bce.ConnectTimeoutError,
    bce.SSLError,
    bce.ProxyConnectionError,
)


class CreateConflict(TransientStorageError):
    """HTTP 409 ConditionalRequestConflict: another create of the key is in flight."""


@dataclass(frozen=True, slots=True)
class S3Target:
    """What a message names: the bucket, how it is shown, where it lives."""

    bucket: str  # the bucket name
    url: str  # "s3://name" plus the endpoint, as S3Bucket.url shows it
    where: str  # the redacted endpoint URL, or "AWS S3 (<region>)"
    region: str


def map_s3_error(
    e: BaseException, op: str, key: str, target: S3Target, *, reached: bool
) -> BucketError:
    """One of our exceptions for a botocore/aiohttp one; says what to fix where it can.

    ``reached``: whether the endpoint has answered once. Until it has, failing to
    connect is a config error (wrong URL, server not started), reported at once.
    """
    what = f"{op} {key!r} in {target.url}"
    if isinstance(e, BucketError):
        return e
    if isinstance(e, bce.ClientError):
        err = e.response.get("Error", {})
        meta = e.response.get("ResponseMetadata", {})
        code = str(err.get("Code", ""))
        status = int(meta.get("HTTPStatusCode") or 0)
        detail = f"{code or 'error'} (HTTP {status})"
        if err.get("Message"):
            detail += f": {err['Message']}"
        mapped = map_client_error(code, status, target, what, f"{op} {key!r}", detail)
        mapped.retry_attempts = int(meta.get("RetryAttempts") or 0)  # type: ignore[attr-defined]
        return mapped
    if isinstance(e, bce.NoCredentialsError | bce.PartialCredentialsError):
        return BucketConfigError(
            f"no usable AWS credentials for {target.url}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if isinstance(e, bce.CredentialRetrievalError | bce.TokenRetrievalError):
        return BucketConfigError(f"could not load AWS credentials for {target.url}: {e}")
    if isinstance(e, UNREACHABLE_EXCEPTIONS):
        if not reached:
            return BucketConfigError(
                f"cannot reach the S3 endpoint {target.where} for bucket {target.bucket!r} "
                f"({type(e).__name__}): start the server or fix --endpoint-url / "
                "AWS_ENDPOINT_URL"
            )
        return TransientStorageError(f"{what}: endpoint unreachable: {e}")
    if isinstance(e, TRANSIENT_EXCEPTIONS):
        return TransientStorageError(f"{what}: {type(e).__name__}: {e}")
    if isinstance(e, bce.ParamValidationError):
        return BucketError(f"{what}: invalid request: {e}")
    return BucketError(f"{what}: {type(e).__name__}: {e}")


def map_client_error(
    code: str, status: int, target: S3Target, what: str, doing: str, detail: str
) -> BucketError:
    """The error for an answer of the store: its error ``code`` and HTTP ``status``.

    ``what`` is "<op> '<key>' in <url>", ``doing`` "<op> '<key>'", ``detail`` the
    code, status and the store's message, for the messages.
    """
    name, where = target.bucket, target.where
    if code == "NoSuchBucket":
        return BucketConfigError(
            f"bucket {name!r} does not exist at {where}: create it or fix --bucket (during {doing})"
        )
    if code == "InvalidBucketName":
        return BucketConfigError(f"{name!r} is not a valid bucket name at {where}: fix --bucket")
    if code == "InvalidAccessKeyId":
        return BucketConfigError(
            f"{what}: the access key is not known to {where}: "
            "fix AWS_ACCESS_KEY_ID (or the profile)"
        )
    if code == "SignatureDoesNotMatch":
        return BucketConfigError(
            f"{what}: the secret key does not match the access key at {where}: "
            "fix AWS_SECRET_ACCESS_KEY (or the profile)"
        )
    if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
        return BucketConfigError(f"{what}: the AWS session token is invalid or expired")
    if code == "RequestTimeTooSkewed":
        return BucketConfigError(f"{what}: this machine's clock is too far off: sync it")
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed") or status == 301:
        return BucketConfigError(
            f"bucket {name!r} is in another region than {target.region!r}: set AWS_REGION "
            f"(during {doing})"
        )
    if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem") or status == 403:
        # SeaweedFS also answers a PUT into a missing bucket with AccessDenied.
        return BucketConfigError(
            f"access denied: {what}: check that bucket {name!r} exists at {where} and that "
            f"the credentials may read, write and list it [{detail}]"
        )
    if code in ("NoSuchKey", "NotFound") or status == 404:
        return ObjectNotFound(f"{what}: not found")
    if code == "PreconditionFailed" or status == 412:
        return PreconditionFailed(f"{what}: {detail}")
    if code == "ConditionalRequestConflict":
        return CreateConflict(f"{what}: {detail}")
    if code == "KeyTooLongError":
        return UnsafeKeyError(f"{what}: {detail}")
    if code in THROTTLE_CODES or status >= 500 or status in (408, 429):
        return TransientStorageError(f"{what}: {detail}")
    return BucketError(f"{what}: {detail}")


def fail_fast(caught: BaseException | None, *, reached: bool) -> bool:
    """Whether botocore should skip its backoff retries for ``caught``.

    No retries while the endpoint has never answered: a wrong URL or a server not
    started should be reported in a second, not after a minute of backoff.
    """
    return not reached and isinstance(caught, UNREACHABLE_EXCEPTIONS)
