"""The vertical route end to end through `dropgpu watch --once`, on both backends."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from handlers.media.probe import probe
from tests.conftest import BucketSpec
from tests.media import (
    make_audio,
    make_empty,
    make_ffconcat_disguise,
    make_text_as_media,
    make_truncated,
    make_video,
)
from tests.pipeline_helpers import put_file, read_manifest, run, run_cli


def fast_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "dropgpu.toml"
    # Small output keeps the test quick; the default 1080x1920 runs in the quickstart test.
    cfg.write_text(
        "[routes.vertical]\nsettle_seconds = 0\nparams = { width = 270, height = 480 }\n"
    )
    return cfg


def test_vertical_route_succeeds_and_bad_media_fails_cleanly(
    bucket_spec: BucketSpec, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    good = make_video(media / "good.mp4", seconds=1, size=(320, 180))
    bad = {
        "zero bytes.mp4": make_empty(media / "zero.mp4"),
        "notes.mp4": make_text_as_media(media / "notes.mp4"),
        "cut.mp4": make_truncated(good, media / "cut.mp4", 0.5),
        "playlist.mkv": make_ffconcat_disguise(media / "playlist.mkv", "good.mp4"),
    }
    audio_only = make_audio(media / "tone.m4a", seconds=1)

    async def drop() -> dict[str, str]:
        etags = {}
        async with bucket_spec.open() as bucket:
            etags["clip ünï 日本.mp4"] = await put_file(
                bucket, "inputs/vertical/clip ünï 日本.mp4", good
            )
            for name, path in bad.items():
                etags[name] = await put_file(bucket, f"inputs/vertical/{name}", path)
            etags["tone.mp4"] = await put_file(bucket, "inputs/vertical/tone.mp4", audio_only)
        return etags

    etags = run(drop())
    result = run_cli(
        ["watch", "--once", "--config", str(fast_config(tmp_path)), *bucket_spec.cli_args]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    async def check() -> None:
        async with bucket_spec.open() as bucket:
            m = await read_manifest(bucket, "outputs/vertical/clip ünï 日本.mp4/manifest.json")
            assert m["status"] == "succeeded"
            assert m["input"]["duration_s"] > 0.5 and m["input"]["width"] == 320
            assert m["result"]["width"] == 270 and m["result"]["height"] == 480
            assert m["runtime"]["video_encoder"] == "libx264"
            out = tmp_path / "out.mp4"
            await bucket.get_to_file(m["outputs"][0]["key"], out)
            info = await asyncio.to_thread(probe, out)
            assert (info.video.width, info.video.height) == (270, 480)
            assert round(info.video.fps) == 30 and info.has_audio

            for name in [*bad, "tone.mp4"]:
                m = await read_manifest(bucket, f"outputs/vertical/{name}/manifest.json")
                assert m["status"] == "failed", name
                assert m["error"]["kind"] == "input", (name, m["error"])
                message = m["error"]["message"]
                assert "\n" not in message and 10 < len(message) < 600, message
                assert "Traceback" not in message
                # The input is untouched: same bytes, same ETag.
                listing = await bucket.list(f"inputs/vertical/{name}")
                assert listing.objects[0].etag == etags[name]
                source = bad.get(name, audio_only)
                body = await bucket.get_bytes(f"inputs/vertical/{name}")
                assert hashlib.sha256(body).digest() == hashlib.sha256(source.read_bytes()).digest()
            tone = await read_manifest(bucket, "outputs/vertical/tone.mp4/manifest.json")
            assert "no video" in tone["error"]["message"].lower()

    run(check())


def test_quickstart_default_bucket_full_size(tmp_path: Path) -> None:
    """README: `dropgpu sample ... && dropgpu watch --once` in a fresh folder."""
    sample = run_cli(
        ["sample", "bucket/inputs/vertical/sample.mp4", "--seconds", "2"], cwd=tmp_path
    )
    assert sample.returncode == 0, sample.stderr
    result = run_cli(["watch", "--once"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest_path = tmp_path / "bucket/outputs/vertical/sample.mp4/manifest.json"

    async def check() -> dict:
        from infra.storage.local import LocalFolderBucket

        async with LocalFolderBucket(tmp_path / "bucket") as bucket:
            return await read_manifest(bucket, "outputs/vertical/sample.mp4/manifest.json")

    manifest = run(check())
    assert manifest_path.is_file()
    assert manifest["status"] == "succeeded"
    # The manifest names the file: outputs/vertical/sample.mp4/<job hash>-<attempt>/vertical.mp4.
    (out,) = manifest["outputs"]
    assert out["key"].startswith("outputs/vertical/sample.mp4/")
    assert out["key"].endswith("-1/vertical.mp4")
    video = tmp_path / "bucket" / out["key"]
    info = probe(video)
    assert (info.video.width, info.video.height) == (1080, 1920)
    assert round(info.video.fps) == 30
    assert info.video.codec == "h264" and info.audio and info.audio.codec == "aac"
    assert hashlib.sha256(video.read_bytes()).hexdigest() == manifest["outputs"][0]["sha256"]
