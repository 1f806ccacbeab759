"""The S3 error mapping as a table: constructed botocore/aiohttp exceptions, no server."""

from __future__ import annotations

import aiohttp
import pytest
from botocore import exceptions as bce

from infra.storage.errors import (
    BucketConfigError,
    BucketError,
    ObjectNotFound,
    PreconditionFailed,
    TransientStorageError,
    UnsafeKeyError,
)
from infra.storage.s3 import S3Bucket
from infra.storage.s3_errors import (
    CreateConflict,
    S3Target,
    fail_fast,
    map_s3_error,
)

TARGET = S3Target(
    bucket="media",
    url="s3://media (endpoint http://127.0.0.1:8333)",
    where="http://127.0.0.1:8333",
    region="eu-west-1",
)


def client_error(
    code: str, status: int, message: str = "m", *, retries: int = 0, op: str = "PutObject"
) -> bce.ClientError:
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries},
    }
    return bce.ClientError(response, op)  # type: ignore[arg-type]


def mapped(e: BaseException, *, reached: bool = True) -> BucketError:
    return map_s3_error(e, "put", "outputs/k.bin", TARGET, reached=reached)


# (exception, expected class, words the message must contain)
CLIENT_ERRORS = [
    (client_error("AccessDenied", 403), BucketConfigError, ["access denied", "'media'", "[Acc"]),
    (client_error("", 403), BucketConfigError, ["access denied", "error (HTTP 403)"]),
    (client_error("AllAccessDisabled", 403), BucketConfigError, ["access denied"]),
    (client_error("AccountProblem", 403), BucketConfigError, ["access denied"]),
    (client_error("InvalidAccessKeyId", 403), BucketConfigError, ["AWS_ACCESS_KEY_ID"]),
    (client_error("SignatureDoesNotMatch", 403), BucketConfigError, ["AWS_SECRET_ACCESS_KEY"]),
    (client_error("ExpiredToken", 400), BucketConfigError, ["session token"]),
    (client_error("InvalidToken", 400), BucketConfigError, ["session token"]),
    (client_error("TokenRefreshRequired", 400), BucketConfigError, ["session token"]),
    (client_error("RequestTimeTooSkewed", 403), BucketConfigError, ["clock"]),
    (client_error("NoSuchBucket", 404), BucketConfigError, ["does not exist", "--bucket"]),
    (client_error("InvalidBucketName", 400), BucketConfigError, ["not a valid bucket name"]),
    (client_error("PermanentRedirect", 301), BucketConfigError, ["'eu-west-1'", "AWS_REGION"]),
    (client_error("", 301), BucketConfigError, ["another region"]),
    (client_error("AuthorizationHeaderMalformed", 400), BucketConfigError, ["AWS_REGION"]),
    (client_error("NoSuchKey", 404), ObjectNotFound, ["not found"]),
    (client_error("NotFound", 404), ObjectNotFound, ["not found"]),
    (client_error("", 404), ObjectNotFound, ["not found"]),
    (client_error("PreconditionFailed", 412), PreconditionFailed, ["(HTTP 412): m"]),
    (client_error("", 412), PreconditionFailed, ["HTTP 412"]),
    (client_error("ConditionalRequestConflict", 409), CreateConflict, ["HTTP 409"]),
    (client_error("KeyTooLongError", 400), UnsafeKeyError, ["KeyTooLongError"]),
    (client_error("SlowDown", 503), TransientStorageError, ["SlowDown (HTTP 503): m"]),
    (client_error("ServiceUnavailable", 503), TransientStorageError, ["ServiceUnavailable"]),
    (client_error("InternalError", 500), TransientStorageError, ["InternalError"]),
    (client_error("", 502), TransientStorageError, ["HTTP 502"]),
    (client_error("RequestTimeout", 400), TransientStorageError, ["RequestTimeout"]),
    (client_error("", 408), TransientStorageError, ["HTTP 408"]),
    (client_error("TooManyRequests", 429), TransientStorageError, ["TooManyRequests"]),
    (client_error("NoSuchUpload", 404), ObjectNotFound, ["not found"]),  # 404 decides first
    (client_error("NoSuchUpload", 400), TransientStorageError, ["NoSuchUpload"]),
    (client_error("OperationAborted", 409), TransientStorageError, ["OperationAborted"]),
    (client_error("InvalidRequest", 400), BucketError, ["InvalidRequest (HTTP 400)"]),
    (client_error("BadDigest", 400, ""), BucketError, ["BadDigest (HTTP 400)"]),
]


@pytest.mark.parametrize(("exc", "expected", "words"), CLIENT_ERRORS)
def test_client_errors(exc: bce.ClientError, expected: type[BucketError], words: list[str]) -> None:
    err = mapped(exc)
    assert type(err) is expected, err
    for word in words:
        assert word in str(err), (word, str(err))


def test_messages_name_the_operation_key_and_bucket() -> None:
    assert str(mapped(client_error("SlowDown", 503))) == (
        "put 'outputs/k.bin' in s3://media (endpoint http://127.0.0.1:8333): SlowDown (HTTP 503): m"
    )
    assert str(mapped(client_error("NoSuchBucket", 404))) == (
        "bucket 'media' does not exist at http://127.0.0.1:8333: create it or fix --bucket "
        "(during put 'outputs/k.bin')"
    )
    # An empty store message adds nothing after the code.
    assert str(mapped(client_error("BadDigest", 400, ""))).endswith("BadDigest (HTTP 400)")


def test_retry_attempts_travel_with_the_error() -> None:
    err = mapped(client_error("PreconditionFailed", 412, retries=2))
    assert err.retry_attempts == 2  # type: ignore[attr-defined]
    assert mapped(client_error("SlowDown", 503)).retry_attempts == 0  # type: ignore[attr-defined]


CONNECTION_ERRORS = [
    (bce.EndpointConnectionError(endpoint_url="http://x"), False, BucketConfigError),
    (bce.EndpointConnectionError(endpoint_url="http://x"), True, TransientStorageError),
    (bce.ConnectTimeoutError(endpoint_url="http://x"), False, BucketConfigError),
    (bce.ConnectTimeoutError(endpoint_url="http://x"), True, TransientStorageError),
    (bce.SSLError(endpoint_url="http://x", error="bad cert"), False, BucketConfigError),
    (bce.ProxyConnectionError(proxy_url="http://p", error="e"), False, BucketConfigError),
    # Once connected, these are worth retrying whether or not it answered before.
    (bce.ReadTimeoutError(endpoint_url="http://x"), False, TransientStorageError),
    (bce.ReadTimeoutError(endpoint_url="http://x"), True, TransientStorageError),
    (bce.ConnectionClosedError(endpoint_url="http://x"), True, TransientStorageError),
    (bce.ResponseStreamingError(error="cut"), True, TransientStorageError),
    (bce.IncompleteReadError(actual_bytes=1, expected_bytes=2), True, TransientStorageError),
    (bce.HTTPClientError(error="e"), True, TransientStorageError),
    (aiohttp.ClientPayloadError("cut"), True, TransientStorageError),
    (aiohttp.ServerDisconnectedError(), True, TransientStorageError),
    (TimeoutError(), True, TransientStorageError),
    (ConnectionResetError(104, "reset"), True, TransientStorageError),
    (bce.NoCredentialsError(), False, BucketConfigError),
    (bce.PartialCredentialsError(provider="env", cred_var="x"), True, BucketConfigError),
    (bce.CredentialRetrievalError(provider="sso", error_msg="e"), True, BucketConfigError),
    (bce.TokenRetrievalError(provider="sso", error_msg="e"), True, BucketConfigError),
    (bce.ParamValidationError(report="bad Key"), True, BucketError),
    (ValueError("odd"), True, BucketError),
]


@pytest.mark.parametrize(("exc", "reached", "expected"), CONNECTION_ERRORS)
def test_connection_and_client_side_errors(
    exc: BaseException, reached: bool, expected: type[BucketError]
) -> None:
    err = mapped(exc, reached=reached)
    assert type(err) is expected, err
    assert "media" in str(err)


def test_unreached_endpoint_says_what_to_fix() -> None:
    err = mapped(bce.EndpointConnectionError(endpoint_url="http://x"), reached=False)
    assert str(err) == (
        "cannot reach the S3 endpoint http://127.0.0.1:8333 for bucket 'media' "
        "(EndpointConnectionError): start the server or fix --endpoint-url / AWS_ENDPOINT_URL"
    )
    assert "AWS_ACCESS_KEY_ID" in str(mapped(bce.NoCredentialsError(), reached=False))


def test_our_own_errors_pass_through() -> None:
    ours = PreconditionFailed("etag changed")
    assert mapped(ours) is ours


def test_fail_fast_only_before_the_first_answer() -> None:
    unreachable = bce.EndpointConnectionError(endpoint_url="http://x")
    assert fail_fast(unreachable, reached=False)
    assert not fail_fast(unreachable, reached=True)
    assert not fail_fast(bce.ReadTimeoutError(endpoint_url="http://x"), reached=False)
    assert not fail_fast(None, reached=False)


def test_bucket_marks_the_endpoint_reached_on_an_error_answer() -> None:
    """A 4xx/5xx answer proves the endpoint is reachable: later connect errors are transient."""
    bucket = S3Bucket("media", endpoint_url="http://user:secret@127.0.0.1:9/")
    assert "secret" not in bucket.url
    unreachable = bce.EndpointConnectionError(endpoint_url="http://x")
    assert type(bucket._map_error(unreachable, "list", "inputs/")) is BucketConfigError
    assert type(bucket._map_error(client_error("SlowDown", 503), "list", "x")) is (
        TransientStorageError
    )
    assert type(bucket._map_error(unreachable, "list", "inputs/")) is TransientStorageError


def test_aws_without_endpoint_is_named_by_region() -> None:
    bucket = S3Bucket("media", region="ap-south-1")
    assert bucket.endpoint_url is None  # conftest unsets AWS_ENDPOINT_URL*
    err = bucket._map_error(client_error("NoSuchBucket", 404), "list", "inputs/")
    assert "at AWS S3 (ap-south-1)" in str(err)
