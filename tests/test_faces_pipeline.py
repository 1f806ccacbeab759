"""The faces route end to end through `dropgpu watch --once`, on both bucket backends:
a video of two real people, a still photo, and a broken file."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import BucketSpec
from tests.face_media import Shot, make_face_still, make_face_video
from tests.media import make_text_as_media
from tests.pipeline_helpers import put_file, read_manifest, run, run_cli

CONFIG = """
[routes.faces]
handler = "faces"
settle_seconds = 0
params = { fps = 2, jpeg_quality = 80 }
"""


def test_faces_route_end_to_end(bucket_spec: BucketSpec, tmp_path: Path) -> None:
    m = tmp_path / "media"
    m.mkdir()
    video = make_face_video(
        m / "cast.mp4",
        [Shot(("hopper",), 1.0), Shot(("astronaut",), 1.5), Shot(("hopper",), 1.0)],
    )
    inputs = {
        "inputs/faces/day 1/cast ü.mp4": video,
        "inputs/faces/hopper.jpg": make_face_still(m / "hopper.jpg"),
        "inputs/faces/notes.mp4": make_text_as_media(m / "notes.mp4"),
    }

    async def drop() -> None:
        async with bucket_spec.open() as bucket:
            for key, path in inputs.items():
                await put_file(bucket, key, path)

    run(drop())
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text(CONFIG)
    result = run_cli(["watch", "--once", "--config", str(cfg), *bucket_spec.cli_args])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    async def check() -> None:
        async with bucket_spec.open() as bucket:
            prefix = "outputs/faces/day 1/cast ü.mp4/"
            manifest = await read_manifest(bucket, prefix + "manifest.json")
            assert manifest["status"] == "succeeded", manifest["error"]
            assert manifest["params"]["jpeg_quality"] == 80
            assert manifest["result"]["persons"] == 2
            outputs = {o["key"].rsplit("/", 1)[-1]: o for o in manifest["outputs"]}
            assert {
                "person-0.jpg",
                "person-0-face.jpg",
                "person-1.jpg",
                "person-1-face.jpg",
            } <= set(outputs)
            doc = json.loads(await bucket.get_bytes(outputs["faces.json"]["key"]))
            hopper, collins = doc["persons"]  # Hopper: 2 s on screen in two spans, merged
            assert hopper["appearances"] == 4 and hopper["first_s"] == 0.0
            assert hopper["last_s"] == 3.0 and collins["appearances"] == 3
            for name in ("person-0.jpg", *(r["image"] for r in doc["representative"])):
                body = await bucket.get_bytes(outputs[name]["key"])
                assert body[:3] == b"\xff\xd8\xff" and len(body) == outputs[name]["size"]

            still = await read_manifest(bucket, "outputs/faces/hopper.jpg/manifest.json")
            assert still["status"] == "succeeded", still["error"]
            assert still["result"]["persons"] == 1 and still["result"]["frames_analysed"] == 1

            bad = await read_manifest(bucket, "outputs/faces/notes.mp4/manifest.json")
            assert bad["status"] == "failed" and bad["error"]["kind"] == "input"
            assert "\n" not in bad["error"]["message"]

    run(check())
