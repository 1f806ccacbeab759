"""The bad-input corpus: hostile files and keys through `dropgpu watch --once`.

One bucket per backend receives the whole corpus (corrupt containers, wrong
extensions, enormous frames in tiny files, very long durations, odd audio
layouts, hostile and very long keys), one `watch --once` processes it, and then:

- every stored input has exactly one outcome: a schema-valid manifest (failed
  with ``error.kind`` "input"/"config" and a readable one-line reason, or
  succeeded where the route legitimately handles the file) or, for a key too
  long to carry a manifest beside it, only the done marker;
- inputs are untouched (bytes and ETag);
- the watcher exits 0 without a traceback, and a second `--once` claims nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from handlers.contract.keys import CLAIMS, DONE, JobRef
from infra.storage.errors import BucketError
from tests.conftest import BucketSpec
from tests.corpus import (
    make_corrupt_mp4,
    make_growing_mjpeg_mkv,
    make_huge_gif,
    make_huge_h264,
    make_huge_png,
    make_image,
    make_lying_duration_mkv,
    make_lying_wav,
    make_many_audio_mkv,
    make_pcm_wav,
    make_random_bytes,
    make_small_video,
    make_sparse_long_video,
    make_surround,
)
from tests.media import make_audio, make_truncated, make_video
from tests.pipeline_helpers import keys_under, put_file, read_manifest, run, run_cli

CONFIG = """
[routes.vertical]
settle_seconds = 0
params = { width = 270, height = 480 }

[routes.capped]
handler = "vertical"
settle_seconds = 0
params = { width = 270, height = 480, max_duration_s = 5 }

[routes.smallframes]
handler = "vertical"
settle_seconds = 0
params = { width = 270, height = 480, max_input_pixels = 1000000 }

[routes.proxy]
settle_seconds = 0
params = { short_side = 144, poster_candidates = 3 }

[routes.stems]
enabled = false

[routes.karaoke]
enabled = false

[routes.frames]
enabled = false

[routes.highlights]
enabled = false
"""

FAILED = "failed"
EITHER = "either"  # the route may handle it or refuse it; both must be clean
SUCCEEDED = "succeeded"
DONE_ONLY = "done-only"  # committed, but the manifest key would exceed S3's 1,024 bytes


@dataclass(frozen=True)
class Case:
    route: str
    rel: str
    source: str  # name of a file in the corpus folder
    expect: str
    reason: str = ""  # regex the failure message must match (case-insensitive)

    @property
    def key(self) -> str:
        return f"inputs/{self.route}/{self.rel}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every corpus file, made once for both backends (a few seconds on 2 cores)."""
    d = tmp_path_factory.mktemp("corpus")
    make_small_video(d / "tiny.mp4", seconds=1)
    for i, ext in enumerate((".mp4", ".mov", ".mkv", ".wav")):
        make_random_bytes(d / f"random{ext}", seed=i)
    silent = make_video(d / "faststart.mp4", seconds=1, size=(64, 36), audio=False,
                        faststart=True)  # fmt: skip
    for box in ("moov", "stco", "stsz", "stsd"):
        make_corrupt_mp4(silent, d / f"bad-{box}.mp4", box)
    mkv = make_video(d / "whole.mkv", seconds=2, size=(64, 36))
    make_truncated(mkv, d / "cut.mkv", 0.5)
    webm = make_video(d / "whole.webm", seconds=2, size=(64, 36), codec="libvpx")
    make_truncated(webm, d / "cut.webm", 0.5)
    make_lying_wav(make_audio(d / "short.wav", 0.5), d / "lying.wav")
    make_audio(d / "tone.wav", 1)
    make_image(d / "still.png")
    make_image(d / "still.jpg")
    make_huge_png(d / "huge.png")
    make_huge_gif(d / "huge.gif")
    make_huge_h264(d / "huge-h264.mp4")
    make_small_video(d / "ten-seconds.mp4", seconds=10, size=16, fps=2)
    make_sparse_long_video(d / "eleven-hours.mp4")
    make_surround(d / "surround.wav", layout="5.1")
    make_surround(d / "surround71.flac", layout="7.1")
    make_surround(d / "surround-video.mp4", layout="5.1", video=True)
    make_audio(d / "phone.wav", 1, sample_rate=8000)
    make_pcm_wav(d / "one-sample.wav", 1)
    make_pcm_wav(d / "no-samples.wav", 0)
    make_growing_mjpeg_mkv(d / "growing.mkv")
    make_lying_duration_mkv(d / "lying.mkv", real_s=20, claimed_s=1)
    make_many_audio_mkv(d / "many-audio.mkv", audio_streams=990)
    return d


NOT_MEDIA = r"not a media file|corrupt|truncated|moov"
# A 255-byte file name (the usual file-system maximum), stored without trouble.
LONG_SEGMENT = "s" * 251 + ".mp4"
# ~1,000 bytes of key: under S3's 1,024, but outputs/<route>/<rel>/manifest.json is over.
VERY_LONG_REL = "/".join(["日本語フォルダ" * 10] * 4) + "/" + "k" * 140 + ".mp4"

CASES = [
    # Corrupt containers.
    Case("vertical", "random.mp4", "random.mp4", FAILED, NOT_MEDIA),
    Case("vertical", "random.mov", "random.mov", FAILED, NOT_MEDIA),
    Case("vertical", "random.mkv", "random.mkv", FAILED, NOT_MEDIA),
    Case("proxy", "random.wav", "random.wav", FAILED, NOT_MEDIA),
    # 96 bytes inverted in the middle of the moov: the codec config is garbage.
    Case("vertical", "bad-moov.mp4", "bad-moov.mp4", FAILED, r"no frame size.*corrupt"),
    Case("vertical", "bad-stco.mp4", "bad-stco.mp4", FAILED, NOT_MEDIA),  # chunk offsets
    Case("vertical", "bad-stsz.mp4", "bad-stsz.mp4", FAILED, NOT_MEDIA),  # sample sizes
    Case("vertical", "bad-stsd.mp4", "bad-stsd.mp4", FAILED, NOT_MEDIA),  # codec config
    Case("vertical", "cut.mkv", "cut.mkv", FAILED, r"truncated or corrupt"),
    Case("vertical", "cut.webm", "cut.webm", FAILED, r"truncated or corrupt"),
    # Wrong extensions.
    Case("vertical", "tone-as-video.mp4", "tone.wav", FAILED, r"no video stream.*audio only"),
    Case("vertical", "png-as-video.mp4", "still.png", FAILED, NOT_MEDIA),
    Case("vertical", "jpeg-as-video.mp4", "still.jpg", FAILED, NOT_MEDIA),
    Case("vertical", "video-as-text.txt", "tiny.mp4", FAILED, r"unsupported file type '\.txt'"),
    Case("proxy", "video-as-text.txt", "tiny.mp4", FAILED, r"unsupported file type '\.txt'"),
    # Enormous frames in tiny files (the PNG's demuxer is not whitelisted at all).
    Case("vertical", "huge-png.mp4", "huge.png", FAILED, NOT_MEDIA),
    Case("vertical", "huge-gif.mkv", "huge.gif", FAILED, r"16000x16000.*max_input_pixels"),
    Case("proxy", "huge-gif.mp4", "huge.gif", FAILED, r"16000x16000.*max_input_pixels"),
    Case("vertical", "huge-h264.mp4", "huge-h264.mp4", FAILED, r"8448x8448.*max_input_pixels"),
    # 320x240 in the header and the first frames, then 2000x2000 (over the route's 1 Mpx).
    Case(
        "smallframes",
        "growing-frames.mkv",
        "growing.mkv",
        FAILED,
        r"frame size changed to 2000x2000 mid-stream.*max_input_pixels",
    ),
    # Very long durations.
    Case("capped", "ten-seconds.mp4", "ten-seconds.mp4", FAILED, r"10\.0 s long.*max_duration_s"),
    Case("vertical", "eleven-hours.mp4", "eleven-hours.mp4", FAILED, r"11:00:00.*4:00:00"),
    Case("proxy", "eleven-hours.mp4", "eleven-hours.mp4", FAILED, r"11:00:00.*max_duration_s"),
    # The header says 1 s, the clusters hold 20 s: on a 5 s cap, an error, not 5 s of output.
    Case(
        "capped",
        "lying-duration.mkv",
        "lying.mkv",
        FAILED,
        r"longer than max_duration_s \(5\.0 s\).*container says 1\.0 s",
    ),
    # A valid file whose video comes after 990 audio streams (~6,000 lines of stream list).
    Case("vertical", "990-audio-streams.mkv", "many-audio.mkv", SUCCEEDED),
    # Odd audio layouts: proxy takes any of them (waveform from a mono mix-down, AAC
    # stereo in the proxy). Observed: all succeed, a header-only WAV included (an
    # empty waveform); EITHER keeps the test honest if a route starts refusing them.
    Case("proxy", "surround-5.1.wav", "surround.wav", EITHER),
    Case("proxy", "surround-7.1.flac", "surround71.flac", EITHER),
    Case("proxy", "surround-5.1-video.mp4", "surround-video.mp4", EITHER),
    Case("proxy", "phone-8khz.wav", "phone.wav", EITHER),
    Case("proxy", "one-sample.wav", "one-sample.wav", EITHER),
    Case("proxy", "no-samples.wav", "no-samples.wav", EITHER),
    # Hostile and very long keys. The folder bucket refuses the unsafe ones at PUT;
    # SeaweedFS refuses '.' and '..' segments, stores control characters as they are
    # and normalises '\\' and '//' to '/' (then it is another, harmless key).
    Case("vertical", "ctl\nnewline.mp4", "tiny.mp4", FAILED, r"unsafe object key.*control"),
    Case("vertical", "ctl\x07bell.mp4", "tiny.mp4", FAILED, r"unsafe object key.*control"),
    Case("vertical", "a/../dotdot.mp4", "tiny.mp4", FAILED, r"unsafe object key.*'\.\.'"),
    Case("vertical", "./dot.mp4", "tiny.mp4", FAILED, r"unsafe object key.*'\.'"),
    Case("vertical", "a//empty-segment.mp4", "tiny.mp4", FAILED, r"unsafe object key.*empty"),
    Case("vertical", "back\\slash.mp4", "tiny.mp4", FAILED, r"unsafe object key.*backslash"),
    Case("vertical", VERY_LONG_REL, "tiny.mp4", DONE_ONLY),
]

# Defects found by the corpus, each run on its own so the rest stays strict.
TRUNCATED_WAV = Case("proxy", "lying.wav", "lying.wav", FAILED, r"truncated or corrupt")
LONG_NAME = Case("vertical", f"long/{LONG_SEGMENT}", "tiny.mp4", SUCCEEDED)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "dropgpu.toml"
    path.write_text(CONFIG)
    return path


def _check_failure(case: Case, manifest: dict) -> None:
    error = manifest["error"]
    assert error["kind"] in ("input", "config"), (case.rel, error)
    message = error["message"]
    assert "\n" not in message and "\r" not in message, (case.rel, message)
    assert 10 < len(message) < 600, (case.rel, message)
    assert "Traceback" not in message, (case.rel, message)
    if case.reason:
        assert re.search(case.reason, message, re.IGNORECASE), (case.rel, message)


def _hostile(rel: str) -> bool:
    """Keys the folder bucket cannot or will not map onto a file."""
    return bool(re.search(r"[\x00-\x1f\\]|(^|/)\.\.?/|//", rel))


def run_corpus(spec: BucketSpec, corpus: Path, tmp_path: Path, cases: list[Case]) -> None:
    """Drop ``cases`` in one bucket, `watch --once` twice, check every outcome."""

    async def drop() -> tuple[dict[str, str], dict[str, str]]:
        stored, refused = {}, {}
        async with spec.open() as bucket:
            for case in cases:
                try:
                    stored[case.key] = await put_file(bucket, case.key, corpus / case.source)
                except BucketError as exc:  # the store itself refuses the key
                    refused[case.key] = f"{type(exc).__name__}: {exc}"
        return stored, refused

    async def inputs() -> set[str]:
        async with spec.open() as bucket:
            return set(await keys_under(bucket, "inputs/"))

    stored, refused = run(drop())
    listed = run(inputs())
    hostile = {c.key for c in cases if _hostile(c.rel)}
    if spec.kind == "local":
        assert set(refused) == hostile, refused
    else:
        assert set(refused) <= hostile, refused
    # Accepted but stored under another key (SeaweedFS: '\\' -> '/', '//' -> '/').
    renamed = set(stored) - listed
    assert all("\\" in key or "//" in key for key in renamed), renamed
    cases = [c for c in cases if c.key in listed]

    args = ["watch", "--once", "--workers", "2", "--config", str(_config(tmp_path))]
    first = run_cli([*args, *spec.cli_args], timeout=180)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "Traceback" not in first.stderr, first.stderr[-4000:]

    async def check() -> set[str]:
        problems: list[object] = []
        async with spec.open() as bucket:
            for case in cases:
                ref = JobRef(case.route, case.rel, stored[case.key])
                # Inputs untouched: same ETag, same bytes.
                listing = await bucket.list(case.key)
                etags = [o.etag for o in listing.objects if o.key == case.key]
                assert etags == [stored[case.key]], case.key
                body = await bucket.get_bytes(case.key)
                source = (corpus / case.source).read_bytes()
                assert hashlib.sha256(body).digest() == hashlib.sha256(source).digest()
                # Committed: the done marker is the fence every outcome goes through.
                if ref.done_key not in await keys_under(bucket, ref.done_key):
                    problems.append((case.rel[:80], "never committed (no done marker)"))
                    continue
                if case.expect == DONE_ONLY:
                    # No manifest (nor outputs) can be stored: the job fails at once as an
                    # input error, and the result lives in the done marker only.
                    assert not ref.manifest_key_fits()
                    assert not await keys_under(bucket, ref.manifest_key), case.rel
                    done = json.loads(await bucket.get_bytes(ref.done_key))
                    assert done["status"] in (SUCCEEDED, FAILED), done
                    continue
                manifest = await read_manifest(bucket, ref.manifest_key)
                status = manifest["status"]
                if case.expect == SUCCEEDED or (case.expect == EITHER and status == SUCCEEDED):
                    if status != SUCCEEDED:
                        problems.append((case.rel[:80], status, manifest["error"]))
                    continue
                if status != FAILED:
                    problems.append((case.rel[:80], "expected failed, got", status))
                    continue
                try:
                    _check_failure(case, manifest)
                except AssertionError as exc:
                    problems.append(str(exc))
            for key in listed - {c.key for c in cases}:  # what a store made of a renamed key
                route, _, rel = key.removeprefix("inputs/").partition("/")
                await read_manifest(bucket, JobRef(route, rel, "").manifest_key)
            assert not problems, problems
            return set(await keys_under(bucket, "_dropgpu/"))

    internal_before = run(check())
    assert not [k for k in internal_before if k.startswith(CLAIMS)], "claims left behind"
    assert len([k for k in internal_before if k.startswith(DONE)]) == len(listed)

    # No loop: a second pass finds nothing to claim and writes nothing.
    second = run_cli([*args, *spec.cli_args], timeout=120)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "Traceback" not in second.stderr
    assert "dropgpu: nothing to do" in second.stderr, second.stderr[-4000:]
    assert "claim_failed" not in second.stderr, second.stderr[-4000:]

    async def internal_keys() -> set[str]:
        async with spec.open() as bucket:
            return set(await keys_under(bucket, "_dropgpu/"))

    assert run(internal_keys()) == internal_before


def test_bad_input_corpus_fails_cleanly_once(
    bucket_spec: BucketSpec, corpus: Path, tmp_path: Path
) -> None:
    assert len(CASES[-1].key.encode()) in range(990, 1024)
    run_corpus(bucket_spec, corpus, tmp_path, CASES)


def test_truncated_wav_with_full_length_header_fails(
    bucket_spec: BucketSpec, corpus: Path, tmp_path: Path
) -> None:
    run_corpus(bucket_spec, corpus, tmp_path, [TRUNCATED_WAV])


def test_255_byte_file_name_is_processed(
    bucket_spec: BucketSpec, corpus: Path, tmp_path: Path
) -> None:
    run_corpus(bucket_spec, corpus, tmp_path, [LONG_NAME])
