"""proxy, frames and highlights end to end through `dropgpu watch --once`, on both backends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.conftest import BucketSpec
from tests.media import make_audio, make_empty, make_text_as_media, make_truncated, make_video
from tests.pipeline_helpers import put_file, read_manifest, run, run_cli
from tests.test_highlights_handler import make_match

CONFIG = """
[routes.proxy]
handler = "handlers.proxy:ProxyHandler"
settle_seconds = 0
params = { short_side = 180 }

[routes.frames]
handler = "handlers.frames:FramesHandler"
settle_seconds = 0
params = { fps = 2, sheet_tile_width = 80 }

[routes.highlights]
handler = "handlers.highlights:HighlightsHandler"
settle_seconds = 0
params = { target_length_s = 6 }

[routes.frames-capped]
handler = "handlers.frames:FramesHandler"
settle_seconds = 0
params = { max_input_pixels = 10000, max_duration_s = 60 }

[routes.proxy-short]
handler = "handlers.proxy:ProxyHandler"
settle_seconds = 0
params = { max_duration_s = 0.5 }
"""


def test_media_routes_succeed_and_bad_inputs_fail_cleanly(
    bucket_spec: BucketSpec, tmp_path: Path
) -> None:
    m = tmp_path / "media"
    m.mkdir()
    clip = make_video(m / "clip.mp4", seconds=2, size=(320, 180))
    good = {
        "inputs/proxy/day 1/clip ü.mp4": clip,
        "inputs/proxy/tone.wav": make_audio(m / "tone.wav", seconds=1),
        "inputs/frames/clip.mp4": clip,
        "inputs/highlights/match.mp4": make_match(m / "match.mp4"),
    }
    bad = {
        "inputs/proxy/zero.mp4": (make_empty(m / "zero.mp4"), "empty"),
        "inputs/proxy/notes.mp4": (make_text_as_media(m / "notes.mp4"), "not"),
        "inputs/proxy/cut.mp4": (make_truncated(clip, m / "cut.mp4", 0.5), "truncated"),
        "inputs/frames/voice.mp4": (make_audio(m / "voice.mp4", seconds=1), "no video"),
        "inputs/highlights/silent.mp4": (
            make_video(m / "silent.mp4", seconds=1, size=(160, 90), audio=False),
            "no audio",
        ),
        "inputs/frames-capped/big.mp4": (clip, "max_input_pixels"),
        "inputs/proxy-short/long.mp4": (clip, "max_duration_s"),
    }

    async def drop() -> dict[str, str]:
        async with bucket_spec.open() as bucket:
            sources = {**good, **{k: v[0] for k, v in bad.items()}}
            return {key: await put_file(bucket, key, path) for key, path in sources.items()}

    etags = run(drop())
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text(CONFIG)
    result = run_cli(
        ["watch", "--once", "--workers", "2", "--config", str(cfg), *bucket_spec.cli_args]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    def manifest_key(key: str) -> str:
        return "outputs/" + key.removeprefix("inputs/") + "/manifest.json"

    async def check() -> None:
        async with bucket_spec.open() as bucket:
            proxy = await read_manifest(bucket, manifest_key("inputs/proxy/day 1/clip ü.mp4"))
            assert proxy["status"] == "succeeded", proxy["error"]
            roles = {o["role"]: o for o in proxy["outputs"]}
            assert set(roles) == {"proxy", "poster", "waveform-peaks", "waveform"}
            assert roles["poster"]["content_type"] == "image/jpeg"
            assert proxy["params"]["short_side"] == 180 and proxy["params"]["waveform"]["bits"] == 8
            assert proxy["input"]["width"] == 320 and proxy["input"]["video_codec"] == "h264"
            assert proxy["result"]["proxy"]["height"] == 180
            assert proxy["runtime"]["video_encoder"] == "libx264"
            peaks = json.loads(await bucket.get_bytes(roles["waveform-peaks"]["key"]))
            assert peaks["version"] == 2 and len(peaks["data"]) == 2 * peaks["length"]

            tone = await read_manifest(bucket, manifest_key("inputs/proxy/tone.wav"))
            assert tone["status"] == "succeeded"
            assert {o["role"] for o in tone["outputs"]} == {"waveform-peaks", "waveform"}

            frames = await read_manifest(bucket, manifest_key("inputs/frames/clip.mp4"))
            assert frames["status"] == "succeeded", frames["error"]
            jpgs = [o for o in frames["outputs"] if o["role"] == "frame"]
            assert len(jpgs) == frames["result"]["count"] == 4
            index = next(o for o in frames["outputs"] if o["role"] == "frames-index")
            doc = json.loads(await bucket.get_bytes(index["key"]))
            assert [f["time_s"] for f in doc["frames"]] == [0.0, 0.5, 1.0, 1.5]
            assert any(o["role"] == "contact-sheet" for o in frames["outputs"])

            hl = await read_manifest(bucket, manifest_key("inputs/highlights/match.mp4"))
            assert hl["status"] == "succeeded", hl["error"]
            assert {o["role"] for o in hl["outputs"]} == {"highlights", "beats", "highlight-reel"}
            assert hl["result"]["reel"]["length_s"] <= 6 and hl["params"]["target_length_s"] == 6

            for key, (source, words) in bad.items():
                failed = await read_manifest(bucket, manifest_key(key))
                assert failed["status"] == "failed", key
                assert failed["error"]["kind"] == "input", (key, failed["error"])
                message = failed["error"]["message"]
                assert "\n" not in message and "Traceback" not in message
                assert words in message.lower() or words in message, (key, message)
                # The input is untouched: same ETag, same bytes.
                listing = await bucket.list(key)
                assert listing.objects[0].etag == etags[key]
                body = await bucket.get_bytes(key)
                assert hashlib.sha256(body).digest() == hashlib.sha256(source.read_bytes()).digest()

    run(check())
