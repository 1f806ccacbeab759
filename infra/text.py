"""Text shaping shared by every layer: one-line messages, quoted names, redacted URLs."""

from __future__ import annotations

import re
import traceback
from urllib.parse import urlsplit, urlunsplit

# A URL inside free text (an exception message, a library's repr): up to the first
# whitespace, quote or angle bracket, which is how libraries delimit the URLs they quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def one_line(text: object, limit: int = 500) -> str:
    """``text`` on one line: whitespace folded, URLs redacted, cut to ``limit`` characters.

    Every error turned into text for a record or a log line goes through here, so a
    token in a URL (``?token=...``, ``user:pw@``) quoted by a library never lands there.
    """
    folded = redact_urls_in(" ".join(str(text).split()))
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


def quoted(name: str, limit: int = 300) -> str:
    """``name`` quoted repr-style, so spaces, control and odd characters are visible.

    ``'clip.mp4 '`` shows its trailing space, ``'a\\nb'`` its newline; long names keep
    their start and end.
    """
    shown = repr(name)
    if len(shown) <= limit:
        return shown
    keep = (limit - 1) // 2
    return f"{shown[:keep]}…{shown[-keep:]}"


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


def _redact_match(match: re.Match[str]) -> str:
    url = match.group(0)
    try:
        parts = urlsplit(url)
        if not (parts.query or parts.fragment or "@" in parts.netloc):
            return url  # nothing that can hold a token: left exactly as written
        return redact_url(url)
    except ValueError:  # not parseable (a broken IPv6 host, a bad port): keep the scheme only
        return url.split("://", 1)[0] + "://…"


def redact_urls_in(text: str) -> str:
    """``text`` with every URL in it passed through ``redact_url``.

    For error text from libraries that quote the URL they failed on (aiohttp:
    ``..., url='http://host/hook?token=...'``).
    """
    return _URL_IN_TEXT.sub(_redact_match, text)


def redacted_traceback(exc: BaseException) -> str:
    """``exc``'s formatted traceback with URLs redacted, for a log line's ``traceback`` field.

    ``log.exception`` would render the messages of the chain verbatim, and they may
    quote a URL with a token.
    """
    return redact_urls_in("".join(traceback.format_exception(exc)))
