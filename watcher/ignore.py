"""Which listed keys are never jobs: folder markers, OS litter, sync temporaries."""

from __future__ import annotations

import re

_LITTER_NAMES = frozenset(
    {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", "$recycle.bin", "@eadir"}
)
_TEMP_SUFFIXES = (
    ".partial",  # rclone (name.<hash>.partial), browsers
    ".part",  # wget, curl -C, Firefox
    ".tmp",
    ".temp",
    ".crdownload",  # Chrome
    ".download",  # Safari
    ".swp",
    "~",
)
# s3transfer (aws s3 cp/sync downloads into a local bucket folder) writes to
# "<name>.<8 hex chars>" and renames when complete.
_S3TRANSFER_TEMP = re.compile(r"\.[^./]+\.[0-9A-Fa-f]{8}$")


def ignore_reason(rel: str) -> str | None:
    """Why the object at ``inputs/<route>/<rel>`` is not a job, or None if it is one."""
    if not rel or rel.endswith("/"):
        return "folder marker"
    segments = rel.split("/")
    for segment in segments[:-1]:
        if segment.startswith(".") and segment not in (".", ".."):
            return "inside a hidden folder"
        if segment.lower() in _LITTER_NAMES:
            return "inside an OS litter folder"
    name = segments[-1]
    lower = name.lower()
    if name.startswith("."):
        return "hidden file"  # .DS_Store, ._AppleDouble, .name.XXXXXX (rsync)
    if lower in _LITTER_NAMES or lower.startswith("~$"):
        return "OS litter"
    if lower.endswith(_TEMP_SUFFIXES):
        return "sync-tool temporary file"
    if _S3TRANSFER_TEMP.search(name):
        return "sync-tool temporary file"
    return None
