"""Which keys a folder bucket can store, and how a name that cannot be one is shown.

A key ``a/b/c.mp4`` is the file ``ROOT/a/b/c.mp4``: every segment must be a plain
file name (no ``..``, no backslash, no control character, valid UTF-8, at most
255 bytes), and ``ROOT/.dropgpu`` is the bucket's own state, never a key.
"""

from __future__ import annotations

import re

from infra.storage.errors import UnsafeKeyError

# Internal state of the folder bucket lives at root/.dropgpu; it is never a key.
STATE_DIR = ".dropgpu"
# Our in-flight temp files: ".<name prefix>.dropgpu-tmp-<16 hex>".
TMP_MARK = ".dropgpu-tmp-"
TMP_RE = re.compile(r"^\..*\.dropgpu-tmp-[0-9a-f]{16}$", re.DOTALL)
NAME_MAX = 255  # bytes per path component on the usual Linux/macOS filesystems
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _char_problem(text: str) -> str | None:
    if text.startswith("/"):
        return "starts with '/'"
    if "\\" in text:
        return "contains a backslash"
    if _CONTROL_RE.search(text):
        return "contains a control character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def _segment_problem(seg: str) -> str | None:
    if seg in ("", ".", ".."):
        return "has an empty, '.' or '..' path segment"
    if len(seg.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return (
            f"has a segment longer than {NAME_MAX} bytes, which a local folder cannot store "
            "(use an S3 bucket or shorter names)"
        )
    return None


def _check(text: str, segments: list[str], what: str) -> None:
    problem = _char_problem(text)
    for seg in segments:
        problem = problem or _segment_problem(seg)
    if problem:
        raise UnsafeKeyError(f"{what} {text!r} {problem}")
    if segments and segments[0] == STATE_DIR:
        raise UnsafeKeyError(f"{what} {text!r}: {STATE_DIR}/ is reserved for the folder bucket")


def validate_key(key: str) -> list[str]:
    """The key's path segments, or UnsafeKeyError when it cannot map to a file safely."""
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError(f"empty or non-string key {key!r}")
    segments = key.split("/")
    _check(key, segments, "key")
    if TMP_RE.match(segments[-1]):
        raise UnsafeKeyError(f"key {key!r} looks like a dropgpu temp file")
    return segments


def validate_prefix(prefix: str) -> list[str]:
    """Segments of the directory part of a listing prefix (the rest is a string filter)."""
    if not prefix:
        return []
    problem = _char_problem(prefix)
    if problem:
        raise UnsafeKeyError(f"prefix {prefix!r} {problem}")
    dir_part = prefix.rpartition("/")[0]
    if not dir_part:
        return []
    segments = dir_part.split("/")
    _check(prefix, segments, "prefix")
    return segments


def name_problem(name: str) -> str | None:
    """Why a file or folder name found on disk cannot be a key segment, or None."""
    return _char_problem(name) or _segment_problem(name)


def printable(name: str) -> str:
    """``name`` for a person: non-printable characters escaped the way repr() does
    (without the quotes), bytes that were not UTF-8 as ``\\xNN``, backslashes doubled."""
    out: list[str] = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape for a raw byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)
