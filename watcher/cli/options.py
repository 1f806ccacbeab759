"""Options shared by the `dropgpu` subcommands, declared once, and typed argument validators.

Subcommands take the shared options through argparse ``parents=``; every
subcommand (``add_command``) also accepts the global logging options, so
``dropgpu -v status`` and ``dropgpu status -v`` mean the same.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from infra.log import FORMAT_ENV, LEVEL_ENV, LOG_FORMATS, LOG_LEVELS
from watcher.exceptions import ConfigError

T = TypeVar("T")
DEFAULT_BUCKET = "./bucket"
BUCKET_ENV = "DROPGPU_BUCKET"


def bucket_options() -> argparse.ArgumentParser:
    """``--bucket`` and ``--endpoint-url``: for every command that opens the bucket."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--bucket",
        default=os.environ.get(BUCKET_ENV, DEFAULT_BUCKET),
        help=f"local folder (default {DEFAULT_BUCKET}), file:///path, or s3://name "
        f"(env {BUCKET_ENV})",
    )
    p.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 endpoint for R2/MinIO/SeaweedFS (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)",
    )
    return p


def config_option() -> argparse.ArgumentParser:
    """``--config``: for every command that reads the routes file."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", default=None, help="routes file (default ./dropgpu.toml if present)")
    return p


def logging_options(*, defaults: bool) -> argparse.ArgumentParser:
    """``-v``, ``--log-level``, ``--log-format``. ``defaults`` False for subcommands:
    an option not repeated after the subcommand must not reset the one given before it."""
    p = argparse.ArgumentParser(add_help=False)
    unset: Any = None if defaults else argparse.SUPPRESS
    g = p.add_argument_group("logging")
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if defaults else argparse.SUPPRESS,
        help="debug logging (same as --log-level DEBUG)",
    )
    g.add_argument(
        "--log-level",
        type=str.upper,  # --log-level debug works too
        choices=LOG_LEVELS,
        default=unset,
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (default INFO, env {LEVEL_ENV}); wins over -v",
    )
    g.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=unset,
        help=f"default: json when stderr is not a terminal (env {FORMAT_ENV})",
    )
    return p


def add_command(
    subparsers: Any,
    name: str,
    *,
    parents: Sequence[argparse.ArgumentParser] = (),
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """``subparsers.add_parser`` with the shared ``parents`` and the logging options."""
    return subparsers.add_parser(
        name, parents=[*parents, logging_options(defaults=False)], **kwargs
    )


def checked(
    convert: Callable[[str], T], ok: Callable[[T], bool], message: str
) -> Callable[[str], T]:
    """An argparse ``type=``: ``convert`` the text, then require ``ok(value)``.

    A value that does not convert is argparse's usual usage error; one that converts
    but is out of range raises ConfigError (``message``, with ``{value}`` filled in),
    which the CLI prints as the one line ``dropgpu: MESSAGE`` with exit code 2, like
    every other bad setting.
    """

    def parse(text: str) -> T:
        value = convert(text)
        if not ok(value):
            raise ConfigError(message.format(value=value))
        return value

    parse.__name__ = convert.__name__  # argparse's message: "invalid float value: 'x'"
    return parse
