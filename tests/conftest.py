"""Shared fixtures: a real SeaweedFS S3 server on loopback and buckets of both kinds.

Tests are plain sync functions that drive async code with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infra.s3_server import SeaweedS3Server
from infra.storage.bucket import Bucket
from infra.storage.local import LocalFolderBucket
from infra.storage.s3 import S3Bucket
from infra.storage.url import open_bucket

# Dummy credentials: SeaweedFS without IAM config accepts anything, and a test
# can never sign a request to real AWS with someone's keys.
TEST_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "dropgpu-test-key",
    "AWS_SECRET_ACCESS_KEY": "dropgpu-test-secret-do-not-leak",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_AWS_ENV_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


@pytest.fixture(scope="session", autouse=True)
def aws_test_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Isolate every test from the developer's AWS env, profiles and config files."""
    cfg = tmp_path_factory.mktemp("aws-config")
    env = dict(TEST_AWS_ENV)
    env["AWS_CONFIG_FILE"] = str(cfg / "config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(cfg / "credentials")
    with pytest.MonkeyPatch.context() as mp:
        for name in _AWS_ENV_UNSET:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield env


@pytest.fixture(scope="session")
def s3_server(
    tmp_path_factory: pytest.TempPathFactory, aws_test_env: dict[str, str]
) -> Iterator[SeaweedS3Server]:
    """One SeaweedFS (master+volume+filer+S3) for the session, on free loopback ports."""
    with SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket_name(s3_server: SeaweedS3Server) -> Iterator[str]:
    """A fresh, empty bucket on the session server; dropped afterwards."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3_server.create_bucket(name)
    yield name
    # Frees its volume for later tests; best effort, the server may be gone.
    with contextlib.suppress(Exception):
        s3_server.delete_bucket(name)


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3Server, s3_bucket_name: str) -> Iterator[S3Bucket]:
    """An S3Bucket on a fresh SeaweedFS bucket, for S3-only tests."""
    b = S3Bucket(s3_bucket_name, endpoint_url=s3_server.endpoint_url)
    yield b
    asyncio.run(b.close())


@pytest.fixture(params=["local", "s3"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bucket]:
    """The same contract on both backends: a folder bucket and a SeaweedFS bucket.

    The object is created outside any event loop; a test uses it inside one
    ``asyncio.run`` and should ``await bucket.close()`` there (S3 clients are
    bound to their loop). Closing again here is a no-op.
    """
    if request.param == "local":
        root = tmp_path / "bucket"
        (root / "inputs").mkdir(parents=True)
        b: Bucket = LocalFolderBucket(root)
    else:
        server: SeaweedS3Server = request.getfixturevalue("s3_server")
        name: str = request.getfixturevalue("s3_bucket_name")
        b = S3Bucket(name, endpoint_url=server.endpoint_url)
    yield b
    asyncio.run(b.close())


@dataclass(frozen=True)
class BucketSpec:
    """What a subprocess needs to reach a bucket: ``--bucket`` (+ ``--endpoint-url``) and env."""

    kind: str  # "local" | "s3"
    spec: str
    endpoint_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cli_args(self) -> list[str]:
        args = ["--bucket", self.spec]
        if self.endpoint_url:
            args += ["--endpoint-url", self.endpoint_url]
        return args

    def subprocess_env(self) -> dict[str, str]:
        """os.environ plus what the bucket needs, for subprocess.run(env=...)."""
        return {**os.environ, **self.env}

    def open(self) -> Bucket:
        return open_bucket(self.spec, endpoint_url=self.endpoint_url)


@pytest.fixture(params=["local", "s3"])
def bucket_spec(
    request: pytest.FixtureRequest, tmp_path: Path, aws_test_env: dict[str, str]
) -> BucketSpec:
    if request.param == "local":
        root = tmp_path / "bucket"
        (root / "inputs").mkdir(parents=True)
        return BucketSpec("local", str(root))
    server: SeaweedS3Server = request.getfixturevalue("s3_server")
    name: str = request.getfixturevalue("s3_bucket_name")
    return BucketSpec("s3", f"s3://{name}", server.endpoint_url, dict(aws_test_env))


@pytest.fixture
def target(bucket_spec: BucketSpec) -> BucketSpec:
    """Pipeline tests: the same scenario on the folder bucket and on SeaweedFS."""
    return bucket_spec


@pytest.fixture
def s3_target(
    s3_server: SeaweedS3Server, s3_bucket_name: str, aws_test_env: dict[str, str]
) -> BucketSpec:
    return BucketSpec("s3", f"s3://{s3_bucket_name}", s3_server.endpoint_url, dict(aws_test_env))
