"""structlog setup: JSON lines off a TTY, readable console on one; secrets redacted."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_FIELD = re.compile(
    r"(secret|password|passwd|token|credential|authorization|signature|access_key|api_key)",
    re.IGNORECASE,
)
# Environment variables whose *values* must never appear in a log line.
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "R2_SECRET_ACCESS_KEY",
    "MODAL_TOKEN_SECRET",
    "DROPGPU_WEBHOOK_SECRET",
)
REDACTED = "***"
# Defaults for `dropgpu --log-level/--log-format`, and how spawned workers inherit them.
LEVEL_ENV = "DROPGPU_LOG_LEVEL"
FORMAT_ENV = "DROPGPU_LOG_FORMAT"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("console", "json")


def _secret_values() -> list[str]:
    # Short values would redact innocent text; real keys are long.
    return [v for name in _SECRET_ENV if len(v := os.environ.get(name, "")) >= 8]


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _redact_field(k, v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, secrets) for v in value)
    return value


def _redact_field(key: Any, value: Any, secrets: list[str]) -> Any:
    if isinstance(key, str) and _SECRET_FIELD.search(key) and value not in (None, ""):
        return REDACTED
    return _scrub(value, secrets)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank credential-named fields and known secret values."""
    secrets = _secret_values()
    for key in list(event_dict):
        event_dict[key] = _redact_field(key, event_dict[key], secrets)
    return event_dict


def configure_logging(
    *, json: bool | None = None, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Idempotent. ``json`` None picks JSON when the stream is not a TTY."""
    stream = stream or sys.stderr
    if json is None:
        fmt = os.environ.get(FORMAT_ENV, "").lower()
        json = fmt == "json" or (fmt != "console" and not stream.isatty())
    level_name = (level or os.environ.get(LEVEL_ENV) or "INFO").upper()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # botocore/aiohttp log through stdlib logging; keep them quiet unless debugging.
    logging.basicConfig(level=logging.WARNING, stream=stream)
