"""Exit codes of `dropgpu`, and the one place an expected error becomes one line on stderr.

docs/operations.md has the table of codes and which commands return them.
Everything dropgpu raises on purpose derives from ``infra.errors.DropgpuError``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
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


def _stdout_reader_left() -> bool:
    """Whether stdout is a pipe nobody reads any more (so a BrokenPipeError was ours)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError):  # no poll, or stdout is not a descriptor
        return True
    # The write end of a pipe whose reader closed polls as an error (Linux) or hang-up.
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


def _silence_stdout() -> None:
    # Point stdout at /dev/null so the interpreter's final flush of what is still
    # buffered does not raise again ("Exception ignored ... BrokenPipeError").
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _flush_stdout() -> None:
    """Flush now, where a closed pipe can still be handled quietly."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def one_line_errors(prog: str = "dropgpu") -> Callable[[Callable[P, int]], Callable[P, int]]:
    """Decorate a command: a DropgpuError is printed as one line and becomes its exit code.

    A closed stdout (``dropgpu status --json | head -c1``, ``| true``) ends any command
    quietly with exit 0, buffered or not: the reader chose to stop reading. Commands do
    their work before they print, so only the output is lost; ``feed`` stops following.
    """

    def decorate(command: Callable[P, int]) -> Callable[P, int]:
        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> int:
            try:
                code = command(*args, **kwargs)
                sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
                return code
            except DropgpuError as exc:
                print(error_line(exc, prog), file=sys.stderr)
                return exit_code(exc)
            except KeyboardInterrupt:
                return ExitCode.INTERRUPTED
            except BrokenPipeError:
                if not _stdout_reader_left():
                    raise  # some other pipe or socket: a bug, keep its traceback
                _silence_stdout()
                return ExitCode.OK
            except SystemExit:  # argparse's --help / --version print to stdout too
                _flush_stdout()
                raise

        return run

    return decorate
