"""The shipped IAM policy grants exactly the requests dropgpu makes; inputs/ only to read.

The requests are recorded, not restated: every code path that touches the bucket
(a tick that claims, jobs that succeed, fail on their input, retry, give up or
upload in parts, a repair, `status`, `retry`, the doctor's create-only check)
runs against SeaweedFS through an S3Bucket whose botocore session records each
operation and its key. Operations map to IAM actions, keys to the resource of
their top-level folder, and that set must equal the policy's grants.

GetObject on _dropgpu/* is needed: the tick reads failure records (give-up
message) and done markers (repairing an interrupted commit), create-if-absent
HEADs the object it just created, and `status` reads claims and done markers.
No code path reads outputs/, so there is no GetObject there. Downstream programs
(the consumer toolkit) use their own, read-only credentials: their requests are
checked against the policy docs/consumers.md gives them.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiobotocore.session import get_session
from aiohttp import web
from botocore.model import OperationModel

from gpu.device import DeviceInfo
from handlers.contract.consumer import fetch_outputs, iter_feed, read_manifest, wait_for_manifest
from handlers.contract.keys import JobRef
from handlers.jobs.runner import JobRunner
from handlers.jobs.webhooks import drain_notifications
from infra.s3_server import SeaweedS3Server
from infra.storage.s3 import MiB, S3Bucket
from tests.handlers_for_tests import executions
from tests.pipeline_helpers import REPO, counting_route, make_config, put_bytes, tick_and_run
from watcher.doctor import bucket_checks
from watcher.status import collect_status, retry_key
from watcher.tick import run_tick

INFRA = REPO / "infra"
BUCKET = "arn:aws:s3:::YOUR-BUCKET"

# botocore operation -> the IAM action that authorises it.
BUCKET_ACTIONS = {"ListObjectsV2": "s3:ListBucket"}
OBJECT_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "DeleteObject": "s3:DeleteObject",
}
CONSUMER = "consumer"  # paths whose name starts with this run as a downstream program


# -- recording -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    path: str  # the code path that made it
    operation: str  # botocore's name: "PutObject", "ListObjectsV2", ...
    key: str  # the object key; for a listing, its prefix


@dataclass
class Recorder:
    """botocore event handlers: one Call per S3 API call (each page, each part)."""

    path: str = "setup"
    fail_upload_parts: int = 0  # answer this many UploadParts with a 503
    calls: list[Call] = field(default_factory=list)

    def record(self, params: dict[str, Any], model: OperationModel, **_: Any) -> None:
        self.calls.append(Call(self.path, model.name, params.get("Key", params.get("Prefix", ""))))

    def fail_part(self, **_: Any) -> tuple[SimpleNamespace, dict[str, Any]] | None:
        """before-call.s3.UploadPart: a SlowDown that reaches S3Bucket (botocore's retries
        only cover real requests), so the upload is aborted and the runner retries it."""
        if self.fail_upload_parts <= 0:
            return None
        self.fail_upload_parts -= 1
        error = {"Code": "SlowDown", "Message": "injected by test_iam_policy"}
        return SimpleNamespace(status_code=503, headers={}), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": 503},
        }

    def of(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[str]:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        await runner.cleanup()


async def drive(plain: S3Bucket, bucket: S3Bucket, rec: Recorder, tmp: Path) -> None:
    """Every code path that touches the bucket, through ``bucket``; setup goes through ``plain``."""
    runs = tmp / "runs"
    runner = JobRunner(bucket, scratch_root=tmp / "scratch", device=DeviceInfo("cpu"))

    async def tick(path: str, routes: dict[str, dict[str, Any]]) -> tuple[Any, list[str]]:
        rec.path = path
        config = make_config(routes, lease_ttl_seconds=2)
        report, outcomes = await tick_and_run(bucket, config, tmp, runner=runner)
        rec.path = "setup"
        return report, [o.status for _, o in outcomes]

    # A commit that died between its fence and its manifest; repaired once its claim is stale.
    etag = await put_bytes(plain, "inputs/fixed/a.bin", b"fixed")
    interrupted = JobRef("fixed", "a.bin", etag)
    await plain.create_if_absent(interrupted.claim_key(1), b"{}")
    await plain.create_if_absent(interrupted.done_key, json.dumps({"status": "succeeded"}).encode())
    stale_at = time.monotonic() + 3.2

    async with webhook_receiver() as hook:
        count = {"count": counting_route(runs / "count", notify_url=hook)}
        await put_bytes(plain, "inputs/count/live/set 1.bin", b"hello")
        _, statuses = await tick("job succeeds, with a webhook", count)
        assert statuses == ["succeeded"]
        rec.path = "job succeeds, with a webhook"
        await drain_notifications(10)
        rec.path = "setup"

    count = {"count": counting_route(runs / "count")}
    await put_bytes(plain, "inputs/count/bad.bin", b"REJECT this")
    assert (await tick("job fails on its input", count))[1] == ["failed"]

    flaky = {"flaky": counting_route(runs / "flaky", params={"fail_times": 1})}
    await put_bytes(plain, "inputs/flaky/a.bin", b"flaky")
    assert (await tick("job fails once, then succeeds", flaky))[1] == ["retry"]
    await asyncio.sleep(1.1)  # the retry time is compared with the store's clock (1 s steps)
    assert (await tick("job fails once, then succeeds", flaky))[1] == ["succeeded"]

    # The runner gives up after the last attempt; the tick gives up when the
    # attempts ran out otherwise (here: max_attempts lowered after a failure).
    broken = counting_route(runs / "broken", params={"fail_times": 99}, max_attempts=1)
    await put_bytes(plain, "inputs/broken/a.bin", b"broken")
    assert (await tick("give up", {"broken": broken}))[1] == ["failed"]
    await put_bytes(plain, "inputs/quit/a.bin", b"quit")
    quit_route = counting_route(runs / "quit", params={"fail_times": 99}, max_attempts=2)
    assert (await tick("give up", {"quit": quit_route}))[1] == ["retry"]
    await asyncio.sleep(1.1)
    report, statuses = await tick("give up", {"quit": {**quit_route, "max_attempts": 1}})
    assert (report.gave_up, statuses) == (1, [])

    # Its input replaced while it runs: the attempt deletes the outputs it uploaded.
    replaced = {"replaced": counting_route(runs / "replaced", params={"sleep_s": 0.5})}
    await put_bytes(plain, "inputs/replaced/a.bin", b"v1")
    rec.path = "input replaced mid-run"
    claimed_v1: list[Any] = []
    await run_tick(bucket, make_config(replaced), claimed_v1.append)
    job = asyncio.create_task(runner.run(claimed_v1[0]))
    while not executions(runs / "replaced"):  # downloaded: its handler runs
        await asyncio.sleep(0.02)
    await put_bytes(plain, "inputs/replaced/a.bin", b"v2!")  # plain: not recorded
    assert (await job).status == "superseded"
    rec.path = "setup"

    big = {"big": counting_route(runs / "big")}
    await put_bytes(plain, "inputs/big/a.bin", os.urandom(6 * MiB))  # above the 5 MiB threshold
    rec.fail_upload_parts = 1  # the first upload is aborted, the retry completes
    assert (await tick("multipart upload, aborted once", big))[1] == ["succeeded"]
    assert rec.fail_upload_parts == 0

    await asyncio.sleep(max(0.0, stale_at - time.monotonic()))
    fixed = {"fixed": counting_route(runs / "fixed")}
    report, statuses = await tick("repair", fixed)
    assert (report.repaired, statuses) == (1, [])

    # `status` with a running job (progress from its claim) and costs (done markers).
    slow = {"slow": counting_route(runs / "slow")}
    await put_bytes(plain, "inputs/slow/a.bin", b"slow")
    claimed: list[Any] = []
    await run_tick(plain, make_config(slow), claimed.append)  # claimed, never run
    assert len(claimed) == 1
    rec.path = "status"
    config = make_config({**count, **flaky, **slow, **big, **fixed})
    status = await collect_status(bucket, config, progress=True, cost=True)
    assert status["slow"].running == 1 and status["count"].succeeded == 1

    rec.path = "retry"
    result = await retry_key(bucket, make_config(count), "inputs/count/live/set 1.bin")
    assert result.ok, result.message

    rec.path = "doctor"
    checks = await bucket_checks(bucket)
    assert all(c.ok for c in checks), checks

    rec.path = f"{CONSUMER}: feed"
    items = [item async for item in iter_feed(bucket)]
    assert {i.input_key for i in items} >= {"inputs/big/a.bin", "inputs/count/bad.bin"}
    rec.path = f"{CONSUMER}: manifest and outputs"
    manifest = await wait_for_manifest(bucket, "inputs/big/a.bin", timeout=5, poll=0.1)
    await read_manifest(bucket, "outputs/big/a.bin/manifest.json", verify_outputs=True)
    assert len(await fetch_outputs(bucket, manifest, tmp / "fetched")) == 1
    rec.path = "setup"


@pytest.fixture(scope="module")
def recorder(
    s3_server: SeaweedS3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recorder]:
    rec = Recorder()
    session = get_session()
    session.register("before-parameter-build.s3", rec.record)
    session.register("before-call.s3.UploadPart", rec.fail_part)
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3_server.create_bucket(name)
    plain = S3Bucket(name, endpoint_url=s3_server.endpoint_url)
    bucket = S3Bucket(
        name,
        endpoint_url=s3_server.endpoint_url,
        session=session,
        multipart_threshold=5 * MiB,
        part_size=5 * MiB,
    )

    async def main() -> None:
        try:
            await drive(plain, bucket, rec, tmp_path_factory.mktemp("iam"))
        finally:
            await plain.close()
            await bucket.close()

    try:
        asyncio.run(main())
        yield rec
    finally:
        s3_server.delete_bucket(name)


# -- policies ----------------------------------------------------------------------------


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _grants() -> set[tuple[str, str]]:
    policy = json.loads((INFRA / "iam-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    grants = set()
    for st in policy["Statement"]:
        # Only plain Allow statements: a Condition or NotAction would change the meaning.
        assert st["Effect"] == "Allow"
        assert set(st) <= {"Sid", "Effect", "Action", "Resource"}, st
        for action in _as_list(st["Action"]):
            for resource in _as_list(st["Resource"]):
                grants.add((action, resource))
    return grants


def allowed(action: str, key: str | None) -> bool:
    """Does the policy allow ``action`` on the bucket (key None) or on object ``key``?"""
    target = BUCKET if key is None else f"{BUCKET}/{key}"
    return any(a == action and fnmatchcase(target, r) for a, r in _grants())


def needed(calls: list[Call]) -> set[tuple[str, str]]:
    """The (action, resource) pairs IAM checks for ``calls``, keys by their top-level folder."""
    pairs = set()
    for c in calls:
        if c.operation in BUCKET_ACTIONS:
            pairs.add((BUCKET_ACTIONS[c.operation], BUCKET))
            continue
        assert c.operation in OBJECT_ACTIONS, f"{c.operation} ({c.path}): map it to its IAM action"
        assert "/" in c.key, c
        pairs.add((OBJECT_ACTIONS[c.operation], f"{BUCKET}/{c.key.split('/', 1)[0]}/*"))
    return pairs


def dropgpu_calls(rec: Recorder) -> list[Call]:
    return [c for c in rec.calls if not c.path.startswith(CONSUMER)]


def test_policy_grants_exactly_the_recorded_requests(recorder: Recorder) -> None:
    assert not recorder.of("setup"), "every recorded request belongs to a named code path"
    used, granted = needed(dropgpu_calls(recorder)), _grants()
    assert not used - granted, f"requests the policy denies: {sorted(used - granted)}"
    assert not granted - used, f"grants no code path uses: {sorted(granted - used)}"
    assert not any("*" in action for action, _ in granted)


# (operation, a part of its key) that makes each path that path: if one is missing,
# the drive above no longer exercises it and the recording proves less than it claims.
EVIDENCE = {
    "job succeeds, with a webhook": [
        ("PutObject", "_dropgpu/claims/"),  # claim (create-if-absent) and heartbeat
        ("GetObject", "inputs/count/"),  # download
        ("PutObject", "outputs/count/"),  # outputs and manifest
        ("PutObject", "_dropgpu/done/"),  # the fence
        ("PutObject", "_dropgpu/feed/"),
        ("PutObject", "_dropgpu/webhooks/"),  # delivery record
        ("DeleteObject", "_dropgpu/claims/"),  # cleanup
    ],
    "job fails on its input": [("PutObject", "_dropgpu/failed/")],
    "job fails once, then succeeds": [("PutObject", "flaky/a.bin@"), ("PutObject", ".failed-")],
    "give up": [("GetObject", ".failed-"), ("PutObject", "outputs/quit/")],
    "multipart upload, aborted once": [
        ("CreateMultipartUpload", "outputs/big/"),
        ("UploadPart", "outputs/big/"),
        ("AbortMultipartUpload", "outputs/big/"),
        ("CompleteMultipartUpload", "outputs/big/"),
    ],
    "repair": [("GetObject", "_dropgpu/done/fixed/"), ("DeleteObject", "_dropgpu/claims/fixed/")],
    "input replaced mid-run": [
        ("PutObject", "outputs/replaced/a.bin/"),
        ("DeleteObject", "outputs/replaced/a.bin/"),  # its own version folder, no manifest
    ],
    "status": [("GetObject", "_dropgpu/claims/slow/"), ("GetObject", "_dropgpu/done/")],
    "retry": [("DeleteObject", "_dropgpu/done/count/"), ("DeleteObject", "_dropgpu/failed/")],
    "doctor": [
        ("PutObject", "_dropgpu/doctor/"),
        ("HeadObject", "_dropgpu/doctor/"),
        ("DeleteObject", "_dropgpu/doctor/"),
    ],
    f"{CONSUMER}: feed": [("ListObjectsV2", "_dropgpu/feed/"), ("GetObject", "_dropgpu/feed/")],
    f"{CONSUMER}: manifest and outputs": [("GetObject", "outputs/big/a.bin/")],
}


@pytest.mark.parametrize("path", sorted(EVIDENCE))
def test_each_code_path_was_recorded(recorder: Recorder, path: str) -> None:
    calls = recorder.of(path)
    seen = sorted({(c.operation, c.key) for c in calls})
    for operation, part in EVIDENCE[path]:
        assert any(c.operation == operation and part in c.key for c in calls), (
            f"{path}: no {operation} of a key with {part!r} in {seen}"
        )


def test_dropgpu_only_reads_inputs(recorder: Recorder) -> None:
    on_inputs = {c.operation for c in dropgpu_calls(recorder) if c.key.startswith("inputs/")}
    assert on_inputs == {"ListObjectsV2", "GetObject"}


@pytest.mark.parametrize(
    ("action", "key"),
    [
        ("s3:ListBucket", None),  # LIST inputs/, _dropgpu/done/, _dropgpu/claims/
        ("s3:GetObject", "inputs/vertical/live/set 1.mp4"),  # download (If-Match)
        ("s3:PutObject", "outputs/vertical/live/set 1.mp4/0a1b-1/vertical.mp4"),  # outputs
        ("s3:DeleteObject", "outputs/vertical/a.mp4/0a1b-1/vertical.mp4"),  # a superseded try's
        ("s3:PutObject", "outputs/vertical/live/set 1.mp4/manifest.json"),
        ("s3:PutObject", "_dropgpu/claims/vertical/a.mp4@e/attempt-1"),  # claim, heartbeat
        ("s3:GetObject", "_dropgpu/claims/vertical/a.mp4@e/attempt-1"),  # HEAD after create
        ("s3:PutObject", "_dropgpu/done/vertical/a.mp4@e"),  # the fence
        ("s3:GetObject", "_dropgpu/done/vertical/a.mp4@e"),  # repair, status --cost
        ("s3:DeleteObject", "_dropgpu/claims/vertical/a.mp4@e/attempt-1"),  # commit cleanup
        ("s3:DeleteObject", "_dropgpu/done/vertical/a.mp4@e"),  # dropgpu retry
    ],
)
def test_every_call_dropgpu_makes_is_allowed(action: str, key: str | None) -> None:
    assert allowed(action, key)


@pytest.mark.parametrize(
    ("action", "key"),
    [
        ("s3:PutObject", "inputs/vertical/a.mp4"),  # inputs are read-only to dropgpu
        ("s3:DeleteObject", "inputs/vertical/a.mp4"),
        ("s3:GetObject", "outputs/vertical/a.mp4/manifest.json"),
        ("s3:PutObject", "other/file"),
        ("s3:GetObject", "other/file"),
        ("s3:DeleteBucket", None),
        ("s3:PutBucketPolicy", None),
    ],
)
def test_nothing_else_is_allowed(action: str, key: str | None) -> None:
    assert not allowed(action, key)


def _consumer_policy() -> list[dict[str, Any]]:
    """The policy docs/consumers.md gives downstream programs (its first JSON block)."""
    text = (REPO / "docs" / "consumers.md").read_text()
    block = text.split("## Permissions", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    return json.loads(block)["Statement"]


def _consumer_allows(call: Call) -> bool:
    action = BUCKET_ACTIONS.get(call.operation) or OBJECT_ACTIONS[call.operation]
    for st in _consumer_policy():
        if st["Effect"] != "Allow" or action not in _as_list(st["Action"]):
            continue
        if action == "s3:ListBucket":
            prefixes = st.get("Condition", {}).get("StringLike", {}).get("s3:prefix", ["*"])
            if BUCKET in _as_list(st["Resource"]) and any(
                fnmatchcase(call.key, p) for p in _as_list(prefixes)
            ):
                return True
        elif any(fnmatchcase(f"{BUCKET}/{call.key}", r) for r in _as_list(st["Resource"])):
            return True
    return False


def test_consumer_toolkit_needs_only_what_docs_consumers_md_grants(recorder: Recorder) -> None:
    calls = [c for c in recorder.calls if c.path.startswith(CONSUMER)]
    assert calls
    denied = sorted({(c.operation, c.key) for c in calls if not _consumer_allows(c)})
    assert not denied, f"the consumer policy in docs/consumers.md denies {denied}"
    assert {c.operation for c in calls} <= {"ListObjectsV2", "GetObject", "HeadObject"}


def test_lifecycle_rule_only_expires_internal_records() -> None:
    rules = json.loads((INFRA / "lifecycle-rule.json").read_text())["Rules"]
    expiring = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules if "Expiration" in r}
    # Never done markers (they make identical re-uploads free), never inputs/outputs.
    assert set(expiring) == {"_dropgpu/claims/", "_dropgpu/feed/", "_dropgpu/webhooks/"}
    # Longer than any job can hold a claim (route timeouts are capped at 24 h).
    assert expiring["_dropgpu/claims/"] >= 2
    for rule in rules:
        assert rule["Status"] == "Enabled"
        assert not rule["Filter"]["Prefix"].startswith("inputs/")
        assert set(rule) <= {
            "ID",
            "Status",
            "Filter",
            "Expiration",
            "AbortIncompleteMultipartUpload",
        }
