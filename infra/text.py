"""Text shaping shared by every layer: one-line messages and redacted URLs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def one_line(text: object, limit: int = 500) -> str:
    """``text`` with all whitespace folded to single spaces, cut to ``limit`` characters."""
    folded = " ".join(str(text).split())
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


def redact_url(url: str, *, keep_query: bool = False) -> str:
    """``url`` without userinfo (and, unless ``keep_query``, without query and fragment).

    Tokens travel in both places (``https://user:pw@host``, ``?token=...``); a
    URL shown in a message, a log line or a bucket record goes through here.
    """
    parts = urlsplit(url)
    if keep_query and not (parts.username or parts.password):
        return url  # nothing to remove: shown exactly as given
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if keep_query:
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
