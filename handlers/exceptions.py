"""Errors a handler (or the job runner) raises, classified as DESIGN §5.4 says.

The runner maps each class to a manifest ``error.kind``:
InputError -> "input" (fail at once), HandlerConfigError -> "config" (fail at
once, say which command fixes it), anything else -> "transient" (retried with
backoff up to the route's max_attempts, then "gave_up").
"""

from __future__ import annotations

from infra.errors import DropgpuError


class HandlerError(DropgpuError):
    """Base class for errors raised by handlers."""


class InputError(HandlerError):
    """The input itself is unusable: corrupt, unsupported, no audio, too long.

    The message is shown to users in the failed manifest: one readable line that
    says what is wrong with the file and, where possible, what to do.
    """


class HandlerConfigError(HandlerError):
    """The deployment is missing something (e.g. a model); retrying cannot help."""


class TransientError(HandlerError):
    """Worth another attempt: timeouts, out of memory, a flaky device."""


class MediaToolError(TransientError):
    """ffmpeg failed for a reason that is not the input's fault."""
