"""The one exception root: every error dropgpu raises on purpose derives from it.

Each package keeps its own base (BucketError, GpuError, HandlerError,
WatcherError, ...) under this root, so the CLI and the Modal app catch one
class to turn any expected failure into a one-line message.
"""

from __future__ import annotations


class DropgpuError(Exception):
    """Base of every error dropgpu raises deliberately (not of programming bugs)."""
