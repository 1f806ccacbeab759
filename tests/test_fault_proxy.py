"""The fault-injecting S3 proxy itself: transparent when quiet, each fault observable."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import exceptions as bce
from botocore.config import Config

from infra.s3_server import SeaweedS3Server
from infra.storage.errors import TransientStorageError
from infra.storage.s3 import S3Bucket
from tests.fault_proxy import FaultProxy, FaultRates


def client(endpoint: str, *, key: str = "k", secret: str = "s", **cfg: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=5,
            read_timeout=cfg.pop("read_timeout", 30),
            **cfg,
        ),
    )


@pytest.fixture
def proxy(s3_server: SeaweedS3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url, seed=7) as p:
        yield p


def test_quiet_proxy_is_transparent(
    proxy: FaultProxy, s3_server: SeaweedS3Server, s3_bucket_name: str
) -> None:
    c = client(proxy.endpoint_url)
    b = s3_bucket_name
    c.put_object(Bucket=b, Key="dir/ünïcode key +&=.bin", Body=b"hello")
    assert c.get_object(Bucket=b, Key="dir/ünïcode key +&=.bin")["Body"].read() == b"hello"
    # Conditional headers reach the store: create-if-absent and If-Match are enforced.
    c.put_object(Bucket=b, Key="once", Body=b"1", IfNoneMatch="*")
    with pytest.raises(bce.ClientError) as e:
        c.put_object(Bucket=b, Key="once", Body=b"2", IfNoneMatch="*")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(bce.ClientError) as e:
        c.get_object(Bucket=b, Key="once", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    head = c.head_object(Bucket=b, Key="once")
    assert head["ContentLength"] == 1
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=b, Prefix="dir/")["Contents"]]
    assert keys == ["dir/ünïcode key +&=.bin"]
    # A streamed multipart upload through the proxy arrives intact.
    part = b"x" * (5 * 1024 * 1024)
    up = c.create_multipart_upload(Bucket=b, Key="big")["UploadId"]
    etags = [
        c.upload_part(Bucket=b, Key="big", UploadId=up, PartNumber=n, Body=part)["ETag"]
        for n in (1, 2)
    ]
    c.complete_multipart_upload(
        Bucket=b,
        Key="big",
        UploadId=up,
        MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": t} for n, t in zip((1, 2), etags, strict=True)]
        },
    )
    direct = s3_server.client().get_object(Bucket=b, Key="big")["Body"].read()
    assert hashlib.sha256(direct).digest() == hashlib.sha256(part * 2).digest()
    assert proxy.injected()["requests"] >= 9
    assert sum(v for k, v in proxy.injected().items() if k != "requests") == 0


def test_error_and_slowdown_faults(proxy: FaultProxy, s3_bucket_name: str) -> None:
    c = client(proxy.endpoint_url)
    proxy.set_rates(FaultRates(error500=1.0))
    with pytest.raises(bce.ClientError) as e:
        c.put_object(Bucket=s3_bucket_name, Key="a", Body=b"a")
    assert e.value.response["Error"]["Code"] == "InternalError"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    proxy.set_rates(FaultRates(slowdown=1.0))
    with pytest.raises(bce.ClientError) as e:
        c.list_objects_v2(Bucket=s3_bucket_name)
    assert e.value.response["Error"]["Code"] == "SlowDown"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert proxy.injected()["error500"] >= 1 and proxy.injected()["slowdown"] >= 1


def test_reset_before_and_after_the_store_applied_the_request(
    proxy: FaultProxy, s3_server: SeaweedS3Server, s3_bucket_name: str
) -> None:
    c = client(proxy.endpoint_url)
    direct = s3_server.client()
    proxy.set_rates(FaultRates(reset=1.0, reset_after_upstream_fraction=0.0))
    with pytest.raises((bce.ConnectionError, bce.HTTPClientError)):
        c.put_object(Bucket=s3_bucket_name, Key="lost", Body=b"x")
    with pytest.raises(bce.ClientError):
        direct.head_object(Bucket=s3_bucket_name, Key="lost")
    # After the store applied it: the client sees a reset, yet the object exists.
    proxy.set_rates(FaultRates(reset=1.0, reset_after_upstream_fraction=1.0))
    with pytest.raises((bce.ConnectionError, bce.HTTPClientError)):
        c.put_object(Bucket=s3_bucket_name, Key="applied", Body=b"y")
    assert direct.get_object(Bucket=s3_bucket_name, Key="applied")["Body"].read() == b"y"
    counts = proxy.injected()
    assert counts["reset"] >= 2 and counts["reset_after_upstream"] >= 1


def test_slow_response_trips_a_short_read_timeout(proxy: FaultProxy, s3_bucket_name: str) -> None:
    client(proxy.endpoint_url).put_object(Bucket=s3_bucket_name, Key="a", Body=b"a")
    proxy.set_rates(FaultRates(slow=1.0, slow_s=2.0))
    with pytest.raises(bce.ReadTimeoutError):
        client(proxy.endpoint_url, read_timeout=0.3).get_object(Bucket=s3_bucket_name, Key="a")
    # With a patient client the same slow answer is correct.
    got = client(proxy.endpoint_url).get_object(Bucket=s3_bucket_name, Key="a")["Body"].read()
    assert got == b"a" and proxy.injected()["slow"] >= 2


def test_truncated_body_only_on_selected_methods(proxy: FaultProxy, s3_bucket_name: str) -> None:
    c = client(proxy.endpoint_url)
    c.put_object(Bucket=s3_bucket_name, Key="t", Body=b"0123456789" * 1000)
    proxy.set_rates(FaultRates(truncate=1.0, methods=frozenset({"GET"})))
    c.put_object(Bucket=s3_bucket_name, Key="u", Body=b"PUT is not truncated")
    body = c.get_object(Bucket=s3_bucket_name, Key="t")["Body"]
    with pytest.raises((bce.IncompleteReadError, bce.ResponseStreamingError)):
        body.read()
    assert proxy.injected()["truncate"] == 1


def test_s3bucket_rides_out_a_few_faults_of_every_kind(
    proxy: FaultProxy, s3_bucket_name: str, tmp_path: Path
) -> None:
    async def go() -> None:
        async with S3Bucket(s3_bucket_name, endpoint_url=proxy.endpoint_url) as b:
            await b.put_bytes("k", b"v" * 5000)  # reached once: faults are transient now
            # 30% faults of every kind on writes: the SDK's retries get every call through.
            proxy.set_rates(FaultRates.uniform(0.3, slow_s=0.2, methods=frozenset({"PUT"})))
            for i in range(10):
                assert await b.create_if_absent(f"c/{i}", f"body {i}".encode())
            # A truncated download is a transient error (the runner retries it), never
            # a short file.
            proxy.set_rates(FaultRates(truncate=1.0, methods=frozenset({"GET"}), max_faults=1))
            proxy.counts.clear()
            with pytest.raises(TransientStorageError):
                await b.get_to_file("k", tmp_path / "k")
            assert not (tmp_path / "k").exists()
            await b.get_to_file("k", tmp_path / "k")
            assert (tmp_path / "k").read_bytes() == b"v" * 5000
            assert proxy.injected()["truncate"] == 1
            proxy.disable()
            assert len((await b.list("c/")).objects) == 10

    asyncio.run(go())


def test_signatures_still_verify_through_the_proxy(tmp_path: Path) -> None:
    """Host is forwarded as signed: a store that checks SigV4 accepts good keys only."""
    with (
        SeaweedS3Server(tmp_path / "auth", credentials=("AKIDPROXYTEST", "proxy-secret")) as srv,
        FaultProxy(srv.endpoint_url) as proxy,
    ):
        srv.create_bucket("signed")
        good = client(proxy.endpoint_url, key="AKIDPROXYTEST", secret="proxy-secret")
        good.put_object(Bucket="signed", Key="a", Body=b"a", IfNoneMatch="*")
        assert good.get_object(Bucket="signed", Key="a")["Body"].read() == b"a"
        bad = client(proxy.endpoint_url, key="AKIDPROXYTEST", secret="wrong")
        with pytest.raises(bce.ClientError) as e:
            bad.get_object(Bucket="signed", Key="a")
        assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
