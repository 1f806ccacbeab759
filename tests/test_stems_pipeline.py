"""The stems and karaoke routes end to end through `dropgpu watch --once`, on both backends."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from handlers.media.probe import probe
from tests.conftest import BucketSpec
from tests.media import make_audio, make_empty, make_text_as_media, make_video
from tests.models_for_tests import make_tiny_store
from tests.pipeline_helpers import put_file, read_manifest, run, run_cli

HANDLER = "handlers.stems:StemsHandler"
CONFIG = f"""
[routes.stems]
handler = "{HANDLER}"
settle_seconds = 0

[routes.karaoke]
handler = "{HANDLER}"
settle_seconds = 0
params = {{ two_stems = "vocals" }}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_store(tmp_path_factory.mktemp("models"))


def test_stems_and_karaoke_routes(
    bucket_spec: BucketSpec, tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROPGPU_MODEL_DIR", str(store))  # run_cli passes os.environ on
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text(CONFIG)
    media = tmp_path / "media"
    media.mkdir()
    song = make_audio(media / "song.wav", 1.5, channels=2, source="noise")
    drops = {
        "inputs/stems/live/set 1 ünï.wav": song,
        "inputs/stems/clip.mp4": make_video(media / "clip.mp4", 1, size=(160, 90)),
        "inputs/karaoke/song.mp3": make_audio(media / "song.mp3", 1.5, channels=1),
        "inputs/stems/zero.wav": make_empty(media / "zero.wav"),
        "inputs/stems/notes.flac": make_text_as_media(media / "notes.flac"),
        "inputs/karaoke/silent.mp4": make_video(media / "silent.mp4", 0.5, (64, 64), audio=False),
    }
    bad = ["inputs/stems/zero.wav", "inputs/stems/notes.flac", "inputs/karaoke/silent.mp4"]

    async def drop() -> dict[str, str]:
        async with bucket_spec.open() as bucket:
            return {key: await put_file(bucket, key, path) for key, path in drops.items()}

    etags = run(drop())
    result = run_cli(
        ["watch", "--once", "--workers", "1", "--config", str(cfg), *bucket_spec.cli_args]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    def manifest_key(key: str) -> str:
        return "outputs/" + key.removeprefix("inputs/") + "/manifest.json"

    async def check() -> None:
        async with bucket_spec.open() as bucket:
            m = await read_manifest(bucket, manifest_key("inputs/stems/live/set 1 ünï.wav"))
            assert m["status"] == "succeeded", m["error"]
            assert m["params"]["model"] == "htdemucs" and m["handler"]["name"] == "stems"
            names = sorted(o["key"].rsplit("/", 1)[1] for o in m["outputs"])
            stems = ["bass", "drums", "other", "vocals"]
            assert names == sorted([f"{s}.flac" for s in stems] + [f"{s}.png" for s in stems])
            assert m["result"]["sample_rate"] == 44100
            assert m["result"]["duration_s"] == pytest.approx(1.5, abs=0.01)
            assert {s["name"] for s in m["result"]["stems"]} == set(stems)
            assert all(s["loudness_lufs"] is not None for s in m["result"]["stems"])
            vocals = next(o for o in m["outputs"] if o["key"].endswith("vocals.flac"))
            assert vocals["role"] == "stem:vocals" and vocals["content_type"] == "audio/flac"
            local = tmp_path / "vocals.flac"
            await bucket.get_to_file(vocals["key"], local)
            info = probe(local)
            assert info.audio.sample_rate == 44100 and info.duration_s == pytest.approx(1.5, 0.05)

            video = await read_manifest(bucket, manifest_key("inputs/stems/clip.mp4"))
            assert video["status"] == "succeeded" and len(video["outputs"]) == 8

            k = await read_manifest(bucket, manifest_key("inputs/karaoke/song.mp3"))
            assert k["status"] == "succeeded", k["error"]
            assert k["params"]["two_stems"] == "vocals"
            assert sorted(o["key"].rsplit("/", 1)[1] for o in k["outputs"]) == [
                "no_vocals.flac", "no_vocals.png", "vocals.flac", "vocals.png",
            ]  # fmt: skip
            # One worker ran every job: the model was loaded once and reused.
            warm = [x["runtime"]["model_warm"] for x in (m, video, k)]
            assert warm.count(False) == 1

            for key in bad:
                f = await read_manifest(bucket, manifest_key(key))
                assert f["status"] == "failed" and f["error"]["kind"] == "input", (key, f)
                message = f["error"]["message"]
                assert "\n" not in message and 10 < len(message) < 600, message
                listing = await bucket.list(key)
                assert listing.objects[0].etag == etags[key]  # the input is untouched
                body = await bucket.get_bytes(key)
                assert (
                    hashlib.sha256(body).digest()
                    == hashlib.sha256(drops[key].read_bytes()).digest()
                )
            silent = await read_manifest(bucket, manifest_key("inputs/karaoke/silent.mp4"))
            assert "no audio" in silent["error"]["message"]

    run(check())


def test_missing_model_is_a_config_failure_not_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROPGPU_MODEL_DIR", str(tmp_path / "empty-store"))
    root = tmp_path / "bucket"
    (root / "inputs" / "stems").mkdir(parents=True)
    make_audio(root / "inputs" / "stems" / "a.wav", 0.5)
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text(CONFIG)
    result = run_cli(
        ["watch", "--once", "--workers", "1", "--config", str(cfg), "--bucket", str(root)]
    )
    assert result.returncode == 0, result.stderr[-3000:]

    async def check() -> None:
        from infra.storage.local import LocalFolderBucket

        async with LocalFolderBucket(root) as bucket:
            m = await read_manifest(bucket, "outputs/stems/a.wav/manifest.json")
            assert m["status"] == "failed" and m["error"]["kind"] == "config"
            assert "dropgpu models pull htdemucs" in m["error"]["message"]
            assert m["attempts"] == 1

    run(check())
