"""``--bucket`` values to Bucket objects.

- ``s3://name``                    an S3 bucket (endpoint: ``--endpoint-url`` or the
                                   AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL env vars)
- ``file:///abs/path``, ``file://rel``, or a plain path
                                   a local folder (created, with ``inputs/``, if missing)

Anything else is refused with a message that lists what is accepted.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from infra.storage.bucket import Bucket
from infra.storage.errors import BucketConfigError
from infra.storage.local import LocalFolderBucket
from infra.storage.s3 import S3Bucket

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Loose on purpose: legacy buckets allow capitals and underscores, R2 and MinIO
# have their own rules; the store itself says "InvalidBucketName" when it disagrees.
_BUCKET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_ACCEPTED = "use s3://<bucket>, file:///<absolute path>, or a folder path"


def open_bucket(spec: str | Path, *, endpoint_url: str | None = None) -> Bucket:
    """The Bucket named by ``spec``; BucketConfigError says what to fix when it cannot."""
    if isinstance(spec, Path):
        return _local(spec, endpoint_url)
    spec = spec.strip()
    if not spec:
        raise BucketConfigError(f"empty bucket: {_ACCEPTED}")
    m = _SCHEME_RE.match(spec)
    if m is None:
        return _local(Path(spec), endpoint_url)
    scheme = m.group(1).lower()
    rest = spec[m.end() :]
    if scheme == "s3":
        return S3Bucket(_s3_name(spec, rest), endpoint_url=endpoint_url)
    if scheme == "file":
        return _local(_file_url_path(spec, rest), endpoint_url)
    raise BucketConfigError(f"unsupported bucket URL {spec!r} (scheme {scheme}://): {_ACCEPTED}")


def _s3_name(spec: str, rest: str) -> str:
    name, _, path = rest.partition("/")
    if not name:
        raise BucketConfigError(f"{spec!r} has no bucket name: use s3://<bucket>")
    if path.strip("/"):
        raise BucketConfigError(
            f"{spec!r} has a path after the bucket name; prefixes inside a bucket are not "
            f"supported yet: use s3://{name} (dropgpu keeps inputs/, outputs/ and _dropgpu/ "
            "at the bucket's top level)"
        )
    if not _BUCKET_NAME_RE.match(name):
        raise BucketConfigError(
            f"{name!r} is not a valid bucket name: letters, digits, '.', '-' and '_' only"
        )
    return name


def _file_url_path(spec: str, rest: str) -> Path:
    # file:///abs -> /abs ; file://localhost/abs -> /abs ; file://rel -> rel (relative)
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    path = unquote(rest)
    if not path:
        raise BucketConfigError(f"{spec!r} names no folder: {_ACCEPTED}")
    return Path(path)


def _local(path: Path, endpoint_url: str | None) -> LocalFolderBucket:
    if endpoint_url:
        raise BucketConfigError(
            f"--endpoint-url {endpoint_url} only applies to s3:// buckets, "
            f"not to the folder {str(path)!r}"
        )
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise BucketConfigError(f"bucket folder {str(path)!r} exists but is not a folder")
    try:
        # A fresh folder bucket is ready to use: users drop files into inputs/<route>/.
        (path / "inputs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BucketConfigError(f"cannot create bucket folder {str(path)!r}: {e.strerror}") from e
    return LocalFolderBucket(path)
