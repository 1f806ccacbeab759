"""File extensions the media routes accept by default (lower case, with the dot)."""

from __future__ import annotations

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mts", ".m2ts", ".ts",
        ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
    }
)  # fmt: skip
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".aif", ".aiff", ".wma"}
)
