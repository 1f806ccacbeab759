"""ffmpeg refusing the job's own settings is one failed attempt, never three (issue 20).

Through the real tick and job runner on both backends: a route whose encoder options
libx264 refuses ends with a ``config`` manifest after attempt 1 (it used to be
retried as transient and end ``gave_up`` after 3), and the settings that used to be
refused now work: ``quality = 0`` (lossless) and ``max_duration_s = 1000000`` with a
``trim_end_s`` as large, which ffmpeg received as ``-t 1e+06``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import BucketSpec
from tests.media import make_video
from tests.pipeline_helpers import (
    keys_under,
    make_config,
    put_file,
    read_manifest,
    run,
    tick_and_run,
)

ENCODER = "tests.media_handlers_for_tests:EncoderOptionHandler"


def test_refused_encoder_settings_fail_once_and_documented_values_work(
    target: BucketSpec, tmp_path: Path
) -> None:
    clip = make_video(tmp_path / "clip.mp4", seconds=1, size=(64, 36), fps=10)
    config = make_config(
        {
            "lossless-high": {
                "handler": ENCODER, "settle_seconds": 0, "max_attempts": 3,
                "params": {"crf": 0, "profile": "high"},
            },
            "vertical": {
                "settle_seconds": 0, "max_attempts": 3,
                "params": {"width": 90, "height": 160, "quality": 0,
                           "max_duration_s": 1_000_000, "trim_end_s": 1_000_000},
            },
        }
    )  # fmt: skip

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_file(bucket, "inputs/lossless-high/clip.mp4", clip)
            await put_file(bucket, "inputs/vertical/clip.mp4", clip)
            report, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert len(outcomes) == 2, report

            refused = await read_manifest(bucket, "outputs/lossless-high/clip.mp4/manifest.json")
            assert refused["status"] == "failed" and refused["attempts"] == 1, refused
            error = refused["error"]
            assert error["kind"] == "config", error
            assert "lossless" in error["message"] and "\n" not in error["message"]
            assert str(tmp_path) not in error["message"]  # no scratch paths

            made = await read_manifest(bucket, "outputs/vertical/clip.mp4/manifest.json")
            assert made["status"] == "succeeded", made["error"]
            assert made["attempts"] == 1

            # Nothing is left to retry: no failure records, no second attempt.
            await asyncio.sleep(1.1)  # S3 Date headers have whole-second resolution
            report, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert outcomes == []
            assert not await keys_under(bucket, "_dropgpu/claims/")

    run(scenario())
