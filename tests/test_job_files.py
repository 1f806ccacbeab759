"""Job files (DESIGN §10) on both backends: sources, overrides, waiting, refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gpu.device import DeviceInfo
from handlers.jobs.outcome import JobStatus
from handlers.jobs.runner import JobRunner
from infra.storage.bucket import Bucket, Listing
from tests.pipeline_helpers import (
    counting_route,
    make_config,
    put_bytes,
    put_file,
    read_manifest,
    run,
    tick_and_run,
)
from watcher.config import Config
from watcher.exceptions import ConfigError
from watcher.state import DecisionState, classify, take_snapshot

SOURCES = "tests.handlers_for_tests:SourcesHandler"
JOB_ONLY = "tests.handlers_for_tests:JobFilesOnlyHandler"


def sources_route(**extra: Any) -> dict[str, Any]:
    return {"handler": SOURCES, "settle_seconds": 0, **extra}


def job(**fields: Any) -> bytes:
    return json.dumps({"dropgpu_job": 1, **fields}).encode()


async def claiming_tick(bucket: Bucket, config: Config, tmp_path: Path) -> list[Any]:
    """Tick until one claims something: a store's clock (S3 Date) reads in whole seconds,
    so a retry time just reached may still lie ahead of it."""
    for _ in range(6):
        report, outcomes = await tick_and_run(bucket, config, tmp_path)
        if outcomes:
            return outcomes
        await asyncio.sleep((report.next_retry_s or 0) + 0.5)
    raise AssertionError("nothing was claimed")


def manifest_key(route: str, rel: str) -> str:
    return f"outputs/{route}/{rel}/manifest.json"


async def output_json(bucket: Bucket, manifest: dict[str, Any]) -> dict[str, Any]:
    (out,) = manifest["outputs"]
    return json.loads(await bucket.get_bytes(out["key"]))


async def error_of(bucket: Bucket, route: str, rel: str) -> str:
    manifest = await read_manifest(bucket, manifest_key(route, rel))
    assert manifest["status"] == "failed", manifest
    assert manifest["error"]["kind"] == "input", manifest["error"]
    message: str = manifest["error"]["message"]
    assert "\n" not in message and "Traceback" not in message
    return message


def test_overrides_and_sources_recorded(bucket: Bucket, tmp_path: Path) -> None:
    async def go() -> None:
        config = make_config({"multi": sources_route(params={"label": "route"})})
        etag_a = await put_bytes(bucket, "sources/a.bin", b"AAA")
        etag_b = await put_bytes(bucket, "inputs/raw/b.bin", b"BB")
        etag_x = await put_bytes(bucket, "outputs/other/x.bin/x.bin", b"X")
        await put_bytes(
            bucket,
            "inputs/multi/edit.json",
            job(
                sources={"a": "sources/a.bin", "b": "inputs/raw/b.bin"},
                params={"label": "job"},
                segments=[{"source": "a"}, {"source": "b", "speed": 2.0}],
                extra_key="outputs/other/x.bin/x.bin",
            ),
        )
        _, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert [o.status for _, o in outcomes] == [JobStatus.SUCCEEDED]
        manifest = await read_manifest(bucket, manifest_key("multi", "edit.json"))
        assert manifest["params"]["label"] == "job"
        assert manifest["params"]["segments"][1] == {"source": "b", "speed": 2.0}
        assert manifest["input"]["key"] == "inputs/multi/edit.json"
        assert manifest["input"]["sources"] == [
            {"name": "a", "key": "sources/a.bin", "etag": etag_a, "size": 3},
            {"name": "b", "key": "inputs/raw/b.bin", "etag": etag_b, "size": 2},
            {
                "name": "outputs/other/x.bin/x.bin",
                "key": "outputs/other/x.bin/x.bin",
                "etag": etag_x,
                "size": 1,
            },
        ]
        got = await output_json(bucket, manifest)
        assert got == {
            "sources": {"a": "AAA", "b": "BB", "outputs/other/x.bin/x.bin": "X"},
            "input": "AAA",  # ctx.input_path is the first source
        }

    run(go())


def test_handler_failure_records_sources_and_params(bucket: Bucket, tmp_path: Path) -> None:
    async def go() -> None:
        config = make_config({"multi": sources_route()})
        etag = await put_bytes(bucket, "sources/a.bin", b"A")
        await put_bytes(
            bucket, "inputs/multi/f.json", job(source="sources/a.bin", fail=True, label="j")
        )
        await tick_and_run(bucket, config, tmp_path)
        assert await error_of(bucket, "multi", "f.json") == "asked to fail"
        manifest = await read_manifest(bucket, manifest_key("multi", "f.json"))
        assert manifest["params"]["label"] == "j" and manifest["params"]["fail"] is True
        assert manifest["input"]["sources"] == [
            {"name": "main", "key": "sources/a.bin", "etag": etag, "size": 1}
        ]

    run(go())


def test_one_source_route_refuses_several(bucket: Bucket, tmp_path: Path) -> None:
    async def go() -> None:
        config = make_config({"count": counting_route(tmp_path / "n")})
        await put_bytes(bucket, "sources/a.bin", b"A")
        await put_bytes(bucket, "inputs/count/one.json", job(source="sources/a.bin"))
        await put_bytes(
            bucket,
            "inputs/count/two.json",
            job(sources={"a": "sources/a.bin", "b": "sources/a.bin"}),
        )
        _, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert sorted(o.status for _, o in outcomes) == [JobStatus.FAILED, JobStatus.SUCCEEDED]
        message = await error_of(bucket, "count", "two.json")
        assert message.startswith("sources: route 'count' takes one source"), message
        one = await read_manifest(bucket, manifest_key("count", "one.json"))
        assert one["input"]["sources"][0]["key"] == "sources/a.bin"

    run(go())


def _snapshot_state(config: Config) -> Any:
    async def state(bucket: Bucket, route: str) -> list[DecisionState]:
        snap = await take_snapshot(bucket, config)
        rc = next(r for r in config.enabled_routes() if r.name == route)
        ttl = config.watch.lease_ttl_seconds
        return [classify(snap, rc, o, lease_ttl_seconds=ttl).state for o in snap.inputs[route]]

    return state


def test_source_after_job_file_waits_then_runs(bucket: Bucket, tmp_path: Path) -> None:
    async def go() -> None:
        config = make_config({"multi": sources_route(sources_wait_seconds=10, max_attempts=1)})
        await put_bytes(bucket, "inputs/multi/late.json", job(source="sources/late.bin"))
        state = _snapshot_state(config)
        for _ in range(2):  # waiting uses no attempt, however often (max_attempts = 1)
            outcomes = await claiming_tick(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == [JobStatus.WAITING]
            assert "source: 'sources/late.bin' does not exist yet" in outcomes[0][1].message
            assert await state(bucket, "multi") == [DecisionState.RETRY_WAIT]
            report, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert outcomes == [] and report.next_retry_s is not None
        await put_bytes(bucket, "sources/late.bin", b"LATE")
        outcomes = await claiming_tick(bucket, config, tmp_path)
        assert [o.status for _, o in outcomes] == [JobStatus.SUCCEEDED]
        manifest = await read_manifest(bucket, manifest_key("multi", "late.json"))
        assert (await output_json(bucket, manifest))["input"] == "LATE"

    run(go())


def test_missing_source_past_the_wait_fails_naming_it(bucket: Bucket, tmp_path: Path) -> None:
    async def go() -> None:
        config = make_config({"multi": sources_route(sources_wait_seconds=0)})
        await put_bytes(bucket, "sources/here.bin", b"H")
        await put_bytes(
            bucket,
            "inputs/multi/gone.json",
            job(sources={"a": "sources/here.bin", "b": "sources/never.bin"}),
        )
        _, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert [o.status for _, o in outcomes] == [JobStatus.FAILED]
        message = await error_of(bucket, "multi", "gone.json")
        assert message.startswith("sources.b: 'sources/never.bin' does not exist"), message

    run(go())


BAD_JOB_FILES: dict[str, tuple[bytes, str]] = {
    "prefix.json": (job(source="elsewhere/a.bin"), "source: 'elsewhere/a.bin': not under"),
    "internal.json": (job(source="_dropgpu/done/x"), "source: '_dropgpu/done/x': sources never"),
    "dotdot.json": (job(source="sources/../_dropgpu/x"), "source: 'sources/../_dropgpu/x': unsafe"),
    "self.json": (job(source="inputs/multi/self.json"), "source: 'inputs/multi/self.json': a job"),
    "chain.json": (job(source="inputs/multi/other.json"), "source: 'inputs/multi/other.json'"),
    "badjson.json": (b'{"dropgpu_job": 1, "source": ', "job file is not valid JSON"),
    "version.json": (job(dropgpu_job=2, source="sources/a.bin"), "dropgpu_job: must be 1"),
    "unknown.json": (job(source="sources/a.bin", colour="red"), "colour: unknown field"),
    "unknownp.json": (job(source="sources/a.bin", params={"fps": 3}), "params.fps: unknown field"),
    "type.json": (job(source="sources/a.bin", params={"label": 3}), "params.label: "),
    "range.json": (
        job(source="sources/a.bin", segments=[{}, {"speed": 0}]),
        "segments[1].speed: must be > 0",
    ),
    "noname.json": (job(sources={}), "sources: must be a non-empty object"),
    "both.json": (job(source="sources/a.bin", sources={"a": "sources/a.bin"}), "source: "),
    "twice.json": (
        job(source="sources/a.bin", label="x", params={"label": "y"}),
        "params.label: given both",
    ),
}


def test_bad_job_files_fail_naming_the_field(bucket: Bucket, tmp_path: Path) -> None:
    async def go() -> None:
        config = make_config({"multi": sources_route()})
        await put_bytes(bucket, "sources/a.bin", b"A")
        for rel, (body, _) in BAD_JOB_FILES.items():
            await put_bytes(bucket, f"inputs/multi/{rel}", body)
        # A .json that is not a job file keeps today's behaviour: an unsupported input.
        await put_bytes(bucket, "inputs/multi/plain.json", b'{"hello": 1}')
        _, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert {o.status for _, o in outcomes} == {JobStatus.FAILED}
        for rel, (_, expected) in BAD_JOB_FILES.items():
            message = await error_of(bucket, "multi", rel)
            assert message.startswith(expected), (rel, message)
        plain = await error_of(bucket, "multi", "plain.json")
        assert plain.startswith("unsupported file type '.json' for route 'multi'"), plain

    run(go())


def test_redrop_reruns_and_job_files_only_route(bucket: Bucket, tmp_path: Path) -> None:
    async def go() -> None:
        config = make_config(
            {"multi": sources_route(), "edl": {"handler": JOB_ONLY, "settle_seconds": 0}}
        )
        await put_bytes(bucket, "sources/a.bin", b"A1")
        await put_bytes(bucket, "inputs/multi/j.json", job(source="sources/a.bin"))
        await put_bytes(bucket, "inputs/edl/clip.bin", b"media")
        await tick_and_run(bucket, config, tmp_path)
        message = await error_of(bucket, "edl", "clip.bin")
        assert message.startswith("route 'edl' takes job files only"), message
        first = await read_manifest(bucket, manifest_key("multi", "j.json"))
        # A source changing later does not rerun the job ...
        await put_bytes(bucket, "sources/a.bin", b"A2")
        _, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert outcomes == []
        # ... re-dropping the job file (new bytes: a new etag) does.
        await put_bytes(bucket, "inputs/multi/j.json", job(source="sources/a.bin", label="2"))
        _, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert [o.status for _, o in outcomes] == [JobStatus.SUCCEEDED]
        second = await read_manifest(bucket, manifest_key("multi", "j.json"))
        assert second["job_id"] != first["job_id"]
        assert (await output_json(bucket, second))["input"] == "A2"

    run(go())


class _ReplacesAfterList:
    """The real bucket, with the source replaced right after the runner lists it."""

    def __init__(self, inner: Bucket, key: str) -> None:
        self._inner = inner
        self._key = key
        self.replaced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list(self, prefix: str, **kw: Any) -> Listing:
        listing = await self._inner.list(prefix, **kw)
        if prefix == self._key and not self.replaced:
            self.replaced = True
            await put_bytes(self._inner, self._key, b"NEW BYTES")
        return listing


def test_source_replaced_between_list_and_get_is_retried(bucket: Bucket, tmp_path: Path) -> None:
    async def go() -> None:
        config = make_config({"multi": sources_route()})
        await put_bytes(bucket, "sources/a.bin", b"OLD")
        await put_bytes(bucket, "inputs/multi/r.json", job(source="sources/a.bin"))
        racing = _ReplacesAfterList(bucket, "sources/a.bin")
        runner = JobRunner(
            racing,  # type: ignore[arg-type]
            scratch_root=tmp_path / "scratch",
            device=DeviceInfo("cpu"),
            worker_name="test",
        )
        _, outcomes = await tick_and_run(bucket, config, tmp_path, runner=runner)
        assert [o.status for _, o in outcomes] == [JobStatus.RETRY]
        assert "source 'sources/a.bin' changed" in outcomes[0][1].message
        outcomes = await claiming_tick(bucket, config, tmp_path)
        assert [o.status for _, o in outcomes] == [JobStatus.SUCCEEDED]
        manifest = await read_manifest(bucket, manifest_key("multi", "r.json"))
        assert (await output_json(bucket, manifest))["input"] == "NEW BYTES"

    run(go())


@pytest.mark.parametrize("size", [2 * 1024 * 1024])
def test_oversized_job_file_is_refused(bucket: Bucket, tmp_path: Path, size: int) -> None:
    async def go() -> None:
        config = make_config({"multi": sources_route()})
        await put_bytes(bucket, "inputs/multi/big.json", b" " * size)
        await tick_and_run(bucket, config, tmp_path)
        assert (await error_of(bucket, "multi", "big.json")).startswith("job file too large")

    run(go())


@pytest.mark.parametrize("prefixes", [["_dropgpu/"], ["sources"], ["../x/"], ["/abs/"]])
def test_source_prefixes_are_checked_at_load(prefixes: list[str]) -> None:
    with pytest.raises(ConfigError, match="source_prefixes"):
        make_config({"multi": sources_route(source_prefixes=prefixes)})


def test_route_source_prefixes_apply(bucket: Bucket, tmp_path: Path) -> None:
    async def go() -> None:
        config = make_config({"multi": sources_route(source_prefixes=["media/"])})
        await put_bytes(bucket, "media/a.bin", b"M")
        await put_bytes(bucket, "sources/a.bin", b"S")
        await put_bytes(bucket, "inputs/multi/ok.json", job(source="media/a.bin"))
        await put_bytes(bucket, "inputs/multi/no.json", job(source="sources/a.bin"))
        await tick_and_run(bucket, config, tmp_path)
        ok = await read_manifest(bucket, manifest_key("multi", "ok.json"))
        assert ok["status"] == "succeeded"
        message = await error_of(bucket, "multi", "no.json")
        assert message == "source: 'sources/a.bin': not under an allowed prefix (media/)"

    run(go())


def test_render_job_file_end_to_end(bucket: Bucket, tmp_path: Path) -> None:
    """The render route through the whole pipeline: an EDL job file beside its clip and logo."""
    from tests.render_media import marker_video, png

    async def go() -> None:
        config = make_config({"render": {"handler": "render", "settle_seconds": 0}})
        await put_file(bucket, "sources/clip.mp4", marker_video(tmp_path / "clip.mp4", 2))
        await put_file(bucket, "sources/logo.png", png(tmp_path / "logo.png"))
        edl = job(
            sources={"a": "sources/clip.mp4"},
            segments=[{"source": "a", "start": 0.0, "end": 1.0, "speed": 2.0}],
            overlays=[{"type": "image", "source": "sources/logo.png", "start": 0, "end": 0.5}],
            output={"preset": "square", "width": 160, "height": 160},
        )
        await put_bytes(bucket, "inputs/render/reel.json", edl)
        await put_file(bucket, "inputs/render/clip.mp4", tmp_path / "clip.mp4")
        bad = job(sources={"a": "sources/clip.mp4"}, segments=[{"start": 0, "end": 1, "speed": 0}])
        await put_bytes(bucket, "inputs/render/bad.json", bad)
        await tick_and_run(bucket, config, tmp_path)
        manifest = await read_manifest(bucket, manifest_key("render", "reel.json"))
        assert manifest["status"] == "succeeded", manifest["error"]
        assert "render.mp4" in {o["key"].rsplit("/", 1)[1] for o in manifest["outputs"]}
        assert {s["key"] for s in manifest["input"]["sources"]} == {
            "sources/clip.mp4",
            "sources/logo.png",
        }
        assert manifest["params"]["segments"][0]["speed"] == 2.0
        assert (await error_of(bucket, "render", "clip.mp4")).startswith(
            "route 'render' takes job files only"
        )
        assert (await error_of(bucket, "render", "bad.json")).startswith("segments[0].speed: ")

    run(go())
