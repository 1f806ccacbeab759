"""Sampled frames from ffmpeg, one at a time, through a named pipe.

ffmpeg (run by :func:`handlers.media.ffmpeg_run.run_ffmpeg`, hardened and capped like
every other decode) writes the frames as a PPM stream (``image2pipe``, ``ppm``) into a
FIFO in the scratch dir; this module reads one frame at a time from it, so memory stays
at one frame plus the pipe buffer whatever the length of the video. Each PPM frame
carries its own size, so stills and videos share one reader.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from handlers.exceptions import InputError, MediaToolError
from handlers.media.decode_caps import DecodeCaps
from handlers.media.ffmpeg_run import run_ffmpeg

_PIPE_BYTES = 1 << 20  # a larger pipe buffer: fewer wake-ups per 6 MB frame
_WAIT_S = 0.05
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in Python 3.10+ on Linux only


class FrameStream:
    """Runs one ffmpeg command whose only output is ``fifo`` and yields its frames.

    Iterate it once; :meth:`close` (also on leaving ``with``) stops ffmpeg early by
    closing the pipe and waits for it. Errors of the ffmpeg run are raised by the
    iteration once its frames are read, as :func:`run_ffmpeg` classified them.
    """

    def __init__(
        self, args: list[str], fifo: Path, *, deadline: float, caps: DecodeCaps | None
    ) -> None:
        self._args, self._fifo, self._deadline, self._caps = args, fifo, deadline, caps
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._fd: int | None = None
        self._closed = False
        self.elapsed_s = 0.0

    def __enter__(self) -> FrameStream:
        os.mkfifo(self._fifo)
        # Opened before ffmpeg starts and non-blocking: ffmpeg's open for writing never
        # waits for a reader, and a failed start cannot leave this side blocked.
        self._fd = os.open(self._fifo, os.O_RDONLY | os.O_NONBLOCK)
        with contextlib.suppress(OSError):  # Linux only; the default 64 KiB works too
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        self._thread = threading.Thread(target=self._run, daemon=True, name="faces-ffmpeg")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            run_ffmpeg(self._args, deadline=self._deadline, caps=self._caps)
        except BaseException as exc:  # handed to the reader, raised there
            self._error = exc
        finally:
            self.elapsed_s = time.monotonic() - started
            self._done.set()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # ffmpeg's next write fails (EPIPE) and it exits
            self._fd = None
        if hasattr(self, "_thread"):
            self._thread.join(timeout=30)
        self._closed = True
        self._fifo.unlink(missing_ok=True)

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at the end of the stream."""
        assert self._fd is not None
        parts: list[bytes] = []
        got = 0
        while got < n:
            try:
                chunk = os.read(self._fd, min(n - got, _PIPE_BYTES))
            except BlockingIOError:  # a writer, no data yet
                select.select([self._fd], [], [], _WAIT_S)
                continue
            if chunk:
                parts.append(chunk)
                got += len(chunk)
                continue
            # No writer: ffmpeg has not opened the pipe yet, or has closed it for good.
            if self._done.is_set():
                try:
                    chunk = os.read(self._fd, min(n - got, _PIPE_BYTES))
                except BlockingIOError:
                    chunk = b""
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
                continue
            if time.monotonic() > self._deadline:
                raise MediaToolError("ffmpeg sent no frames before the job deadline")
            time.sleep(_WAIT_S / 5)
        return b"".join(parts)

    def _header(self) -> tuple[int, int] | None:
        """The next PPM header ("P6 <w> <h> 255" and one whitespace byte), or None at the end."""
        fields: list[bytes] = []
        token = b""
        while len(fields) < 4:
            byte = self._read(1)
            if not byte:
                if fields or token:
                    self._truncated()
                return None
            if byte.isspace():
                if token:
                    fields.append(token)
                    token = b""
                continue
            token += byte
            if len(token) > 8:
                raise MediaToolError("unexpected data in ffmpeg's frame stream")
        if fields[0] != b"P6" or fields[3] != b"255":
            raise MediaToolError("unexpected data in ffmpeg's frame stream")
        return int(fields[1]), int(fields[2])

    def __iter__(self) -> Iterator[np.ndarray]:
        while (size := self._header()) is not None:
            width, height = size
            data = self._read(width * height * 3)
            if len(data) < width * height * 3:
                self._truncated()
            yield np.frombuffer(data, np.uint8).reshape(height, width, 3)
        self._done.wait(timeout=30)  # ffmpeg closed its end: it is exiting
        if self._error is not None:
            raise self._error

    def _truncated(self) -> None:
        """A frame cut short: ffmpeg's own error says why, when it has one."""
        self._done.wait(timeout=30)
        if self._error is not None:
            raise self._error
        raise InputError("the decoded frame stream ended in the middle of a frame")
