"""A read-only, seekable view of a byte range of an open file.

Multipart uploads send each part as one of these, so the HTTP client streams it
in small reads instead of holding (and copying) the whole part in memory.
"""

from __future__ import annotations

import io
import os


class FileWindow(io.RawIOBase):
    """Bytes ``[offset, offset + length)`` of file descriptor ``fd`` (not owned)."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._start = offset
        self._length = length
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        # pread: parts are uploaded concurrently from one descriptor.
        data = os.pread(self._fd, want, self._start + self._pos)
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        # The descriptor belongs to the uploader, which closes it once.
        super().close()
