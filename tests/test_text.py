"""infra/text.py: one-line messages redact URLs; names are quoted so odd characters show."""

from __future__ import annotations

import pytest

from infra.text import one_line, quoted, redact_urls_in

TOKEN = "s3cr3t-t0ken"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # aiohttp's ClientResponseError text and its repr of the request URL.
        (
            f"400, message='Bad status line', url='http://127.0.0.1:9/hook?token={TOKEN}'",
            "400, message='Bad status line', url='http://127.0.0.1:9/hook'",
        ),
        (
            f"RequestInfo(url=URL('https://h/p?t={TOKEN}#frag'))",
            "RequestInfo(url=URL('https://h/p'))",
        ),
        (
            f"connect to https://user:{TOKEN}@host:8443/x failed",
            "connect to https://host:8443/x failed",
        ),
        (f"<http://h/x?a={TOKEN}>", "<http://h/x>"),
        # Nothing that can hold a token: left exactly as written (case and all).
        (
            "endpoint http://Seaweed:8333/bucket (HTTP 503)",
            "endpoint http://Seaweed:8333/bucket (HTTP 503)",
        ),
        ("no url here", "no url here"),
        # Unparseable (broken IPv6 host): only the scheme survives.
        (f"http://[::1:80/?token={TOKEN} then", "http://… then"),
    ],
)
def test_urls_in_text_lose_userinfo_query_and_fragment(text: str, expected: str) -> None:
    assert redact_urls_in(text) == expected


def test_one_line_redacts_before_cutting() -> None:
    text = f"ClientResponseError:\n 400,\n url='http://h/hook?token={TOKEN}'"
    assert one_line(text) == "ClientResponseError: 400, url='http://h/hook'"
    # Cut inside the URL: the cut cannot leave half a token behind.
    long = "x" * 480 + f" http://h/hook?token={TOKEN}"
    assert TOKEN[:4] not in one_line(long, 500)


def test_quoted_shows_spaces_and_control_characters() -> None:
    assert quoted("clip.mp4 ") == "'clip.mp4 '"
    assert quoted("a\nb.mp4") == "'a\\nb.mp4'"
    assert quoted("日本 1.mp4") == "'日本 1.mp4'"
    assert quoted("it's.mp4") == '"it\'s.mp4"'
    long = quoted("a" * 400 + "END", limit=100)
    assert len(long) <= 100 and long.startswith("'aaa") and long.endswith("END'")
