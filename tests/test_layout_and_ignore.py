from __future__ import annotations

import pytest

from handlers.contract.keys import MAX_KEY_BYTES, JobRef, parse_claim_key, unsafe_rel_reason
from watcher.ignore import ignore_reason


@pytest.mark.parametrize(
    "rel",
    [
        "clip.mp4",
        "live/set 1.wav",
        "日本語/ライブ.mp4",
        "Ünïcödé folder/Привет мир.mov",
        "a/b/c/d.mp4",
        "song.final.mp3",
    ],
)
def test_normal_names_are_jobs(rel: str) -> None:
    assert ignore_reason(rel) is None
    assert unsafe_rel_reason(rel) is None


@pytest.mark.parametrize(
    "rel",
    [
        "folder/",
        ".DS_Store",
        "sub/.DS_Store",
        "._clip.mp4",
        "Thumbs.db",
        "desktop.ini",
        "clip.mp4.partial",
        "clip.mp4.a1b2c3d4.partial",
        "clip.mp4.part",
        "clip.tmp",
        "clip.mp4.crdownload",
        ".clip.mp4.XXXXXX",
        ".hidden/clip.mp4",
        "clip.mp4.3fA9b0C1",
        "~$report.docx",
        "clip.mp4~",
    ],
)
def test_litter_and_temporaries_are_ignored(rel: str) -> None:
    assert ignore_reason(rel) is not None


@pytest.mark.parametrize(
    "rel",
    ["../etc/passwd", "a/../b.mp4", "a/./b.mp4", "a//b.mp4", "a\\b.mp4", "bad\x07.mp4", "/abs.mp4"],
)
def test_unsafe_keys_are_named(rel: str) -> None:
    reason = unsafe_rel_reason(rel)
    assert reason and "\n" not in reason


def test_job_ids_are_readable_when_short_and_hashed_when_long() -> None:
    short = JobRef("vertical", "live/set 1.mp4", "abc123")
    assert short.job_id == "vertical/live/set 1.mp4@abc123"
    assert short.manifest_key == "outputs/vertical/live/set 1.mp4/manifest.json"
    long_rel = "x" * 200 + "/" + "é" * 300 + ".mp4"  # ~810 bytes
    long = JobRef("vertical", long_rel, "abc123")
    assert long.job_id.startswith("vertical/#") and long.job_id.endswith("@abc123")
    for key in (long.done_key, long.claim_key(99), long.failure_key(99, 10**13)):
        assert len(key.encode()) < 200
    hostile = JobRef("vertical", "a/../b.mp4", "abc")
    assert ".." not in hostile.job_id
    # Distinct versions of one key are distinct jobs; odd ETags are hashed.
    assert JobRef("v", "a", "e1").job_id != JobRef("v", "a", "e2").job_id
    assert "/" not in JobRef("v", "a", 'we"ird/etag').job_id.rsplit("@", 1)[1]


def test_manifest_key_limit() -> None:
    ok = JobRef("vertical", "a" * 900, "e")
    assert ok.manifest_key_fits() and len(ok.manifest_key.encode()) <= MAX_KEY_BYTES
    too_long = JobRef("vertical", "a" * 1000, "e")
    assert not too_long.manifest_key_fits()


def test_claim_keys_parse_back() -> None:
    ref = JobRef("vertical", "dir/clip.mp4", "etag1")
    c = parse_claim_key(ref.claim_key(3))
    assert c and (c.job_id, c.attempt, c.kind) == (ref.job_id, 3, "claim")
    f = parse_claim_key(ref.failure_key(2, 1234567890123))
    assert f and (f.kind, f.attempt, f.retry_at_ms) == ("failed", 2, 1234567890123)
    r = parse_claim_key(ref.released_key(4))
    assert r and (r.kind, r.attempt) == ("released", 4)
    assert parse_claim_key("_dropgpu/claims/garbage") is None
    assert parse_claim_key("_dropgpu/claims/x/attempt-1.bogus") is None


def test_job_id_is_hashed_when_the_etag_would_push_a_segment_past_255_bytes() -> None:
    ref = JobRef("vertical", "long/" + "s" * 251 + ".mp4", "0123456789abcdef0123456789abcdef")
    assert ref.job_id.startswith("vertical/#")
    for key in (ref.done_key, ref.claim_key(1), ref.failure_key(1, 10**13)):
        assert all(len(segment.encode()) <= 255 for segment in key.split("/"))
