"""Exit codes of `dropgpu`, and the one place an expected error becomes one line on stderr.

docs/operations.md has the table of codes and which commands return them.
Everything dropgpu raises on purpose derives from ``infra.errors.DropgpuError``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import ParamSpec

from gpu.exceptions import ModelStoreError
from handlers.contract.consumer import ConsumerError
from infra.errors import DropgpuError
from infra.storage.errors import BucketConfigError, BucketError
from watcher.exceptions import WatcherError

P = ParamSpec("P")


class ExitCode(IntEnum):
    OK = 0
    # The command ran, but not everything it did succeeded: a doctor check, a retry,
    # a storage request, `modal deploy`, ffmpeg in `sample`.
    FAILED = 1
    # The command could not start: bad arguments, config, bucket URL or store, no token.
    USAGE = 2
    # Ctrl-C (128 + SIGINT), where the command does not make Ctrl-C its normal end.
    INTERRUPTED = 130


# Errors that mean "fix the command line, the config or the setup", checked in order.
_USAGE_ERRORS: tuple[type[DropgpuError], ...] = (
    BucketConfigError,
    WatcherError,
    ConsumerError,
    ModelStoreError,
)


def exit_code(exc: DropgpuError) -> ExitCode:
    return ExitCode.USAGE if isinstance(exc, _USAGE_ERRORS) else ExitCode.FAILED


def error_line(exc: DropgpuError, prog: str = "dropgpu") -> str:
    if isinstance(exc, BucketError) and not isinstance(exc, BucketConfigError):
        return f"{prog}: storage error: {exc} (try again; check the endpoint)"
    return f"{prog}: {exc}"


def one_line_errors(prog: str = "dropgpu") -> Callable[[Callable[P, int]], Callable[P, int]]:
    """Decorate a command: a DropgpuError is printed as one line and becomes its exit code."""

    def decorate(command: Callable[P, int]) -> Callable[P, int]:
        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> int:
            try:
                return command(*args, **kwargs)
            except DropgpuError as exc:
                print(error_line(exc, prog), file=sys.stderr)
                return exit_code(exc)
            except KeyboardInterrupt:
                return ExitCode.INTERRUPTED

        return run

    return decorate
