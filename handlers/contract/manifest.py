"""manifest.json schema version 1 (DESIGN §6): the contract with downstream programs.

The pydantic models build manifests; the JSON Schema file shipped beside them
(handlers/contract/schema/manifest-v1.schema.json) is what consumers and the tests
validate against. ``validate_manifest`` checks a dict against that file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
ErrorKind = Literal["input", "config", "transient", "gave_up"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """UTC ISO-8601 with a Z suffix and millisecond precision."""
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HandlerInfo(_Model):
    name: str
    version: str


class SourceInfo(_Model):
    """One source of a job file (DESIGN §10) as downloaded: ``input.sources`` lists them."""

    name: str  # its name in the job file's ``sources`` ("main" for ``source``), or the key
    key: str
    etag: str
    size: int


class InputInfo(BaseModel):
    # Media probe facts (duration_s, width, fps, codecs, ...) are extra fields.
    model_config = ConfigDict(extra="allow")

    key: str
    etag: str
    size: int
    content_type: str | None = None
    last_modified: str | None = None
    duration_s: float | None = None
    # A job file's media as downloaded, ``sources`` (a list of SourceInfo dicts), is an
    # extra field, absent for a plain media input: plain manifests keep their shape.


class OutputInfo(_Model):
    key: str
    size: int
    sha256: str
    content_type: str
    role: str


class ErrorInfo(_Model):
    kind: ErrorKind
    message: str


class Timings(_Model):
    claimed_at: str | None
    started_at: str | None
    finished_at: str
    download_s: float | None = None
    process_s: float | None = None
    upload_s: float | None = None


class RuntimeInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    host: str
    device: str | None
    gpu_name: str | None = None
    dropgpu_version: str
    worker: str | None = None


class Manifest(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    status: Literal["succeeded", "failed"]
    job_id: str
    route: str
    handler: HandlerInfo
    params: dict[str, Any]
    input: InputInfo
    outputs: list[OutputInfo] = Field(default_factory=list)
    result: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    attempts: int
    timings: Timings
    runtime: RuntimeInfo

    def to_json_bytes(self) -> bytes:
        """Serialise, validated against the shipped schema: an invalid manifest is a
        bug, and it must never reach consumers."""
        data = self.model_dump(mode="json")
        validate_manifest(data)
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


@cache
def manifest_schema() -> dict[str, Any]:
    text = (
        resources.files("handlers.contract").joinpath("schema/manifest-v1.schema.json").read_text()
    )
    return json.loads(text)


def validate_manifest(data: dict[str, Any] | bytes | str) -> dict[str, Any]:
    """Validate against the shipped JSON Schema; returns the parsed dict.

    Raises jsonschema.ValidationError when the document breaks the contract.
    """
    if isinstance(data, bytes | str):
        data = json.loads(data)
    _validator().validate(data)
    return data


@cache
def _validator() -> jsonschema.Draft202012Validator:
    # jsonschema.validate() re-checks the schema itself on every call (13-43 ms a job).
    return jsonschema.Draft202012Validator(manifest_schema())
