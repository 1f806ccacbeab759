"""Job files (DESIGN §10): parsing one, checking its source keys, merging its params.

A job file is a JSON object under ``inputs/<route>/`` whose top level has
``"dropgpu_job": 1``. It names its media by bucket key (``source``, named
"main", or ``sources``, a map of names to keys) and carries params that
override the route's for this job only: the ``params`` object, and every other
top-level field (render's EDL lives at the top level).

Every error here is an InputError whose one-line message names the field by its
path in the job file: ``sources.a``, ``params.fps``, ``segments[1].speed``.
Pure: no I/O (the runner downloads the file and its sources).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from handlers.contract.keys import MAX_KEY_BYTES, unsafe_rel_reason
from handlers.exceptions import InputError
from handlers.protocol import HandlerParams
from infra.text import quoted

MAX_JOB_FILE_BYTES = 1024 * 1024
MAX_SOURCES = 32
JOB_FILE_SUFFIX = ".json"
MAIN_SOURCE = "main"
_RESERVED = frozenset({"dropgpu_job", "source", "sources", "params"})
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_INTERNAL = "_dropgpu/"


@dataclass(frozen=True, slots=True)
class JobFile:
    sources: dict[str, str]  # name -> bucket key, in the job file's order
    params: dict[str, Any]  # the ``params`` object
    top_level: dict[str, Any]  # every other top-level field (also params)

    def merged_params(self, route_params: dict[str, Any]) -> dict[str, Any]:
        """Route params, overridden by the job file's (top level and ``params`` alike)."""
        return {**route_params, **self.top_level, **self.params}


def field_path(loc: tuple[int | str, ...] | list[int | str], *, prefix: str = "") -> str:
    """``("segments", 1, "speed")`` -> ``segments[1].speed`` (after ``prefix``)."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_job_file(data: bytes) -> JobFile | None:
    """The job file in ``data``, or None when it is not one (no ``dropgpu_job``).

    Raises InputError for a job file that is malformed. Source keys are checked
    separately (``check_source_key``): that needs the route's settings.
    """
    if len(data) > MAX_JOB_FILE_BYTES:
        raise InputError(f"job file too large: {len(data)} bytes (limit {MAX_JOB_FILE_BYTES})")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None  # not JSON text at all: a plain (unsupported) .json file
    except (ValueError, RecursionError) as exc:
        if b"dropgpu_job" in data:
            raise InputError(f"job file is not valid JSON: {exc}") from exc
        return None
    if not isinstance(doc, dict) or "dropgpu_job" not in doc:
        return None
    if doc["dropgpu_job"] != 1 or isinstance(doc["dropgpu_job"], bool):
        raise InputError("dropgpu_job: must be 1 (the only job file version)")
    has_one, has_many = "source" in doc, "sources" in doc
    if has_one == has_many:
        raise InputError("source: a job file names its media with either 'source' or 'sources'")
    sources: dict[str, str]
    if has_one:
        sources = {MAIN_SOURCE: _key_field(doc["source"], "source")}
    else:
        raw = doc["sources"]
        if not isinstance(raw, dict) or not raw:
            raise InputError("sources: must be a non-empty object of names to bucket keys")
        if len(raw) > MAX_SOURCES:
            raise InputError(f"sources: at most {MAX_SOURCES} sources, not {len(raw)}")
        sources = {}
        for name, key in raw.items():
            if not _SOURCE_NAME.fullmatch(name):
                raise InputError(
                    f"sources.{name}: a source name is letters, digits, '-' or '_' (max 40)"
                )
            sources[name] = _key_field(key, f"sources.{name}")
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise InputError("params: must be an object")
    top_level = {k: v for k, v in doc.items() if k not in _RESERVED}
    twice = sorted(set(params) & set(top_level))
    if twice:
        raise InputError(f"params.{twice[0]}: given both at the top level and under params")
    return JobFile(sources=sources, params=dict(params), top_level=top_level)


def _key_field(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: must be a bucket key (a non-empty string)")
    return value


def check_source_key(key: str, where: str, *, job_key: str, prefixes: tuple[str, ...]) -> None:
    """Refuse a source key that is internal, hostile, outside ``prefixes`` or a job file."""
    shown = f"{where}: {quoted(key)}"
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InputError(f"{shown}: key longer than {MAX_KEY_BYTES} bytes")
    if key.startswith(_INTERNAL) or key.startswith("/"):
        raise InputError(f"{shown}: sources never come from {_INTERNAL}")
    reason = unsafe_rel_reason(key)
    if reason:
        raise InputError(f"{shown}: unsafe key ({reason})")
    if not any(key.startswith(p) for p in prefixes):
        raise InputError(f"{shown}: not under an allowed prefix ({', '.join(prefixes)})")
    if key == job_key:
        raise InputError(f"{shown}: a job file cannot be its own source")
    if key.lower().endswith(JOB_FILE_SUFFIX):
        # A source is media; a .json source could be another job file (a loop).
        raise InputError(f"{shown}: a source cannot be a .json file (job files do not chain)")


def validate_params(
    params_model: type[HandlerParams], job_file: JobFile, route_params: dict[str, Any]
) -> HandlerParams:
    """The handler's params for this job; an invalid field is an InputError naming its path.

    A field given under ``params`` is named ``params.<field>``; a top-level field by its
    own path (``segments[1].speed``); a route param the job file left alone as
    ``route params.<field>`` (still the job's input: its override made it invalid).
    """
    try:
        return params_model(**job_file.merged_params(route_params))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        head = loc[0] if loc else None
        if head in job_file.params:
            prefix = "params"
        elif head in job_file.top_level or head is None:
            prefix = ""
        else:
            prefix = "route params"
        path = field_path(loc, prefix=prefix)
        raise InputError(f"{path}: {_short(err)}") from exc


_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _short(err: Any) -> str:
    """pydantic's message, shortened for bounds (``must be > 0``) and unknown fields."""
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        return f"must be {sign} {(err.get('ctx') or {}).get(name)}"
    return str(err.get("msg", "invalid value"))
