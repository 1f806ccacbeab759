"""`dropgpu status` tells what is there: a finished job whose manifest is gone is
"missing" (never "succeeded") and names `dropgpu retry` as the fix; entries a folder
bucket cannot list as objects are "skipped", each with its reason.

The counting is pure (``tally``, ``count_missing``, ``format_status``) and tested from
built listings; the scenarios run on both backends, through the CLI where it prints.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from handlers.contract.keys import DONE, FAILED, JobRef
from infra.storage.bucket import Bucket, Listing, ObjectInfo, SkippedEntry
from tests.conftest import BucketSpec
from tests.pipeline_helpers import (
    COUNTING,
    counting_route,
    keys_under,
    make_config,
    put_bytes,
    run,
    run_cli,
    tick_and_run,
)
from watcher.state import build_snapshot
from watcher.status import collect_status, count_missing, format_status, retry_key, tally

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _obj(key: str, age_s: float = 100) -> ObjectInfo:
    return ObjectInfo(key, "e1", 1, NOW - timedelta(seconds=age_s))


def _listing(*objects: ObjectInfo, skipped: list[SkippedEntry] | None = None) -> Listing:
    return Listing(list(objects), NOW, skipped=skipped or [])


def test_status_counts_missing_manifests_and_skipped_entries_from_listings(
    tmp_path: Path,
) -> None:
    config = make_config({"count": counting_route(tmp_path)}, lease_ttl_seconds=60)
    kept, gone, gone_failed, committing = (
        JobRef("count", name, "e1") for name in ("kept.bin", "gone.bin", "bad.bin", "now.bin")
    )
    odd = SkippedEntry("inputs/count/two\\nlines.bin", "unaddressable_name", "newline in name")
    snapshot = build_snapshot(
        {
            "count": _listing(
                *(_obj(r.input_key) for r in (kept, gone, gone_failed, committing)),
                skipped=[odd],
            )
        },
        done=_listing(*(_obj(r.done_key) for r in (kept, gone, gone_failed, committing))),
        # A commit in progress: done marker written, claims not yet deleted.
        claims=_listing(_obj(committing.claim_key(1), 1)),
        failed=_listing(_obj(gone_failed.failed_index_key)),
    )
    out = tally(snapshot, config)
    # The committing job's manifest may still be on its way: never checked.
    assert {r.rel for r in out.finished["count"]} == {"kept.bin", "gone.bin", "bad.bin"}
    count_missing(out, {"count": {kept.manifest_key}}, snapshot.failed)
    st = out.routes["count"]
    assert (st.succeeded, st.failed, st.missing, st.skipped) == (2, 0, 2, 1)
    assert st.missing_manifests == [
        {
            "key": "inputs/count/gone.bin",
            "manifest_key": "outputs/count/gone.bin/manifest.json",
            "fix": "dropgpu retry inputs/count/gone.bin",
        },
        {
            "key": "inputs/count/bad.bin",
            "manifest_key": "outputs/count/bad.bin/manifest.json",
            "fix": "dropgpu retry inputs/count/bad.bin",
        },
    ]
    assert st.skipped_entries == [
        {"name": odd.name, "kind": "unaddressable_name", "reason": "newline in name"}
    ]
    text = format_status({"count": st})
    header, row, *details = text.splitlines()
    assert header.split() == [
        "route",
        "pending",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "missing",
        "skipped",
    ]
    assert row.split() == ["count", "0", "0", "0", "2", "0", "2", "1"]
    assert details == [
        "  missing inputs/count/gone.bin: finished, but outputs/count/gone.bin/manifest.json "
        "is gone; run `dropgpu retry inputs/count/gone.bin`",
        "  missing inputs/count/bad.bin: finished, but outputs/count/bad.bin/manifest.json "
        "is gone; run `dropgpu retry inputs/count/bad.bin`",
        "  skipped inputs/count/two\\nlines.bin: newline in name",
    ]


def test_odd_names_and_keys_stay_on_one_line_and_quote_for_the_shell(tmp_path: Path) -> None:
    config = make_config({"count": counting_route(tmp_path)})
    spaced = JobRef("count", "live/set 1.bin", "e1")
    raw = SkippedEntry("inputs/count/raw\nname", "unaddressable_name", "newline\nin name")
    snapshot = build_snapshot(
        {"count": _listing(_obj(spaced.input_key), skipped=[raw])},
        done=_listing(_obj(spaced.done_key)),
        claims=_listing(),
    )
    out = tally(snapshot, config)
    count_missing(out, {}, snapshot.failed)
    text = format_status(out.routes)
    assert "run `dropgpu retry 'inputs/count/live/set 1.bin'`" in text
    assert "  skipped inputs/count/raw\\nname: newline in name" in text.splitlines()


def _drop_and_process(target: BucketSpec, tmp_path: Path, inputs: dict[str, bytes]) -> None:
    config = make_config({"count": counting_route(tmp_path / "runs")})

    async def scenario() -> None:
        async with target.open() as bucket:
            for key, data in inputs.items():
                await put_bytes(bucket, key, data)
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert sorted(o.status for _, o in outcomes) == ["succeeded"] * len(inputs)

    run(scenario())


async def _user_deletes(target: BucketSpec, bucket: Bucket, key: str) -> None:
    # dropgpu's folder bucket refuses to delete inputs; a person just removes the file.
    if target.kind == "local":
        (Path(target.spec) / key).unlink()
    else:
        await bucket.delete(key)


async def _delete_under(bucket: Bucket, prefix: str) -> None:
    for key in await keys_under(bucket, prefix):
        await bucket.delete(key)


def test_deleted_outputs_are_missing_not_succeeded_and_retry_reruns_them(
    target: BucketSpec, tmp_path: Path
) -> None:
    config = make_config({"count": counting_route(tmp_path / "runs")})
    _drop_and_process(
        target,
        tmp_path,
        {"inputs/count/a.bin": b"a", "inputs/count/b.bin": b"b", "inputs/count/c.bin": b"c"},
    )

    async def break_it() -> None:
        async with target.open() as bucket:
            # The outputs of a deleted by hand; b deleted with its outputs and the same
            # bytes uploaded again (same ETag: the same job, already done).
            await _delete_under(bucket, "outputs/count/a.bin/")
            await _delete_under(bucket, "outputs/count/b.bin/")
            await _user_deletes(target, bucket, "inputs/count/b.bin")
            await put_bytes(bucket, "inputs/count/b.bin", b"b")
            st = (await collect_status(bucket, config))["count"]
            assert (st.succeeded, st.missing, st.pending) == (1, 2, 0)
            assert [m["key"] for m in st.missing_manifests] == [
                "inputs/count/a.bin",
                "inputs/count/b.bin",
            ]
            # The watcher does not rerun them by itself (docs/operations.md says why).
            report, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert outcomes == [] and not report.claimed

    run(break_it())
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text(
        f'[routes.vertical]\nenabled = false\n[routes.count]\nhandler = "{COUNTING}"\n'
        f'settle_seconds = 0\nparams = {{ counter_dir = "{tmp_path / "runs"}" }}\n'
    )
    common = ["--config", str(cfg), *target.cli_args]
    shown = run_cli(["status", *common])
    assert shown.returncode == 0, shown.stderr
    assert "run `dropgpu retry inputs/count/a.bin`" in shown.stdout
    assert "run `dropgpu retry inputs/count/b.bin`" in shown.stdout
    as_json = json.loads(run_cli(["status", "--json", *common]).stdout)["count"]
    assert (as_json["succeeded"], as_json["missing"]) == (1, 2)
    assert as_json["missing_manifests"][0]["fix"] == "dropgpu retry inputs/count/a.bin"

    async def fix_it() -> None:
        async with target.open() as bucket:
            for key in ("inputs/count/a.bin", "inputs/count/b.bin"):
                assert (await retry_key(bucket, config, key)).ok
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["succeeded", "succeeded"]
            st = (await collect_status(bucket, config))["count"]
            assert (st.succeeded, st.missing) == (3, 0)

    run(fix_it())


def test_a_failed_job_whose_manifest_is_gone_is_missing_too(
    target: BucketSpec, tmp_path: Path
) -> None:
    config = make_config({"count": counting_route(tmp_path / "runs")})

    async def scenario() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/x.bin", b"REJECT me")
            _, outcomes = await tick_and_run(bucket, config, tmp_path)
            assert [o.status for _, o in outcomes] == ["failed"]
            assert (await collect_status(bucket, config))["count"].failed == 1
            await bucket.delete("outputs/count/x.bin/manifest.json")
            st = (await collect_status(bucket, config))["count"]
            assert (st.failed, st.missing) == (0, 1)
            assert await keys_under(bucket, FAILED) and await keys_under(bucket, DONE)

    run(scenario())


def test_status_shows_a_file_whose_name_cannot_be_a_key(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    (root / "inputs" / "count").mkdir(parents=True)
    (root / "inputs" / "count" / "two\nlines.bin").write_bytes(b"copied by hand")
    (root / "inputs" / "count" / "fine.bin").write_bytes(b"fine")
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text(
        f'[routes.vertical]\nenabled = false\n[routes.count]\nhandler = "{COUNTING}"\n'
        f'params = {{ counter_dir = "{tmp_path / "runs"}" }}\n'
    )
    common = ["--config", str(cfg), "--bucket", str(root)]
    as_json = json.loads(run_cli(["status", "--json", *common]).stdout)["count"]
    assert as_json["pending"] == 1 and as_json["skipped"] == 1
    (entry,) = as_json["skipped_entries"]
    assert "lines.bin" in entry["name"] and "\n" not in entry["name"] and entry["reason"]
    text = run_cli(["status", *common]).stdout
    skipped = [line for line in text.splitlines() if line.startswith("  skipped ")]
    assert len(skipped) == 1 and "lines.bin" in skipped[0] and entry["reason"] in skipped[0]
