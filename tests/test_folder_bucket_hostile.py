"""The folder bucket under attack (issue 11): symlinks, FIFOs, bad entries, half-written copies.

Every scenario uses a real folder, real symlinks, FIFOs and processes; the
pipeline ones run the real tick and job runner with the counting test handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from gpu.device import DeviceInfo
from handlers.contract.keys import JobRef
from handlers.jobs.outcome import JobStatus
from handlers.jobs.runner import JobRunner
from handlers.jobs.spec import JobSpec
from infra.storage.bucket import Listing
from infra.storage.errors import BucketConfigError, ObjectNotFound, UnsafeKeyError
from infra.storage.etag_cache import FileStat
from infra.storage.in_flight import Verdict, WriteTracker, leases_work, write_verdict
from infra.storage.local import LocalFolderBucket
from tests.pipeline_helpers import counting_route, make_config, tick_and_run
from watcher.state import DecisionState
from watcher.tick import run_tick

T = TypeVar("T")
NOBODY = 65534


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def within(seconds: float, fn: Callable[[], T], unblock: Callable[[], None]) -> T:
    """``fn()`` in a thread; a call that hangs fails the test instead of hanging CI.

    ``unblock`` frees the stuck thread afterwards (e.g. opens the FIFO's other end).
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the test thread
            error.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        unblock()
        t.join(10)
        pytest.fail(f"the call still blocked after {seconds} s")
    if error:
        raise error[0]
    return result[0]


def open_writer_end(fifo: Path) -> None:
    """Frees a reader blocked in open() on ``fifo`` (then it sees EOF)."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "bucket"
    (r / "inputs").mkdir(parents=True)
    return r


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (not following links) with its bytes."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink() and ".dropgpu" not in p.parts:
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


# -- point 1: no write, rename, link or unlink follows a symlink ---------------------------


def test_a_put_through_a_symlinked_output_folder_never_lands_in_inputs(
    root: Path, tmp_path: Path
) -> None:
    (root / "inputs" / "proxy").mkdir()
    (root / "inputs" / "proxy" / "proxy.mp4").write_bytes(b"someone's input")
    (root / "inputs" / "proxy" / "evil.mp4").write_bytes(b"the attacker's input")
    (root / "outputs" / "proxy").mkdir(parents=True)
    (root / "outputs" / "proxy" / "evil.mp4").symlink_to("../../inputs/proxy")
    before = tree(root)
    src = tmp_path / "out.mp4"
    src.write_bytes(b"an output")
    bucket = LocalFolderBucket(root)

    async def scenario() -> None:
        key = "outputs/proxy/evil.mp4/proxy.mp4"
        with pytest.raises(UnsafeKeyError, match="symlink") as info:
            await bucket.put_file(key, src, content_type="video/mp4")
        assert "'outputs/proxy/evil.mp4'" in str(info.value)
        with pytest.raises(UnsafeKeyError, match="symlink"):
            await bucket.put_bytes(key, b"overwrite")
        with pytest.raises(UnsafeKeyError, match="symlink"):
            await bucket.create_if_absent("outputs/proxy/evil.mp4/new.json", b"{}")
        with pytest.raises(UnsafeKeyError, match="symlink"):
            await bucket.put_bytes("outputs/proxy/evil.mp4/deeper/x.json", b"{}")
        # Reads refuse the folder link too: a key never means a file behind one.
        with pytest.raises(UnsafeKeyError, match="symlink"):
            await bucket.get_bytes("outputs/proxy/evil.mp4/proxy.mp4")

    run(scenario())
    assert tree(root) == before


def test_a_symlink_at_the_final_name_is_never_written_through(root: Path) -> None:
    (root / "inputs" / "r").mkdir()
    victim = root / "inputs" / "r" / "a.mp4"
    victim.write_bytes(b"input bytes")
    (root / "outputs" / "r" / "a.mp4").mkdir(parents=True)
    link = root / "outputs" / "r" / "a.mp4" / "manifest.json"
    link.symlink_to("../../../inputs/r/a.mp4")
    bucket = LocalFolderBucket(root)

    async def scenario() -> None:
        with pytest.raises(UnsafeKeyError, match="symlink"):
            await bucket.put_bytes("outputs/r/a.mp4/manifest.json", b"{}")
        # The name is taken (by the link): create-if-absent loses, writes nothing.
        assert await bucket.create_if_absent("outputs/r/a.mp4/manifest.json", b"{}") is False

    run(scenario())
    assert victim.read_bytes() == b"input bytes"
    assert link.is_symlink()


def test_a_delete_through_a_symlinked_claim_folder_never_unlinks_inputs(root: Path) -> None:
    vertical = root / "inputs" / "vertical"
    vertical.mkdir()
    for name in ("a.mp4", "b.mp4", "attempt-1"):
        (vertical / name).write_bytes(name.encode())
    ref = JobRef("proxy", "x.mp4", md5(b"x"))
    claims = root / ref.claims_prefix.rstrip("/")
    claims.parent.mkdir(parents=True)
    claims.symlink_to(os.path.relpath(vertical, claims.parent))
    before = tree(root)
    bucket = LocalFolderBucket(root)

    async def scenario() -> None:
        # What a commit's claim cleanup does: list the job's claims, delete each.
        listing = await bucket.list(ref.claims_prefix)
        assert listing.objects == []
        [entry] = listing.skipped
        assert entry.kind == "symlink" and entry.name == ref.claims_prefix
        for key in (ref.claim_key(1), ref.claims_prefix + "a.mp4"):
            with pytest.raises(UnsafeKeyError, match="refusing to delete"):
                await bucket.delete(key)
        # The whole claims listing goes on and names the link.
        everything = await bucket.list("_dropgpu/claims/")
        assert [e.name for e in everything.skipped] == [ref.claims_prefix.rstrip("/")]

    run(scenario())
    assert tree(root) == before


def test_a_delete_removes_the_key_itself_never_a_link_target(root: Path) -> None:
    target = root / "outputs" / "r" / "keep.json"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"keep")
    (root / "_dropgpu").mkdir()
    (root / "_dropgpu" / "alias").symlink_to("../outputs/r/keep.json")
    bucket = LocalFolderBucket(root)
    run(bucket.delete("_dropgpu/alias"))
    assert not (root / "_dropgpu").exists()  # the link went, its emptied folder too
    assert target.read_bytes() == b"keep"


def test_reads_follow_only_file_links_that_stay_in_the_bucket(root: Path) -> None:
    (root / "inputs" / "r").mkdir()
    (root / "media").mkdir()
    (root / "media" / "real.mp4").write_bytes(b"real bytes")
    (root / "inputs" / "r" / "alias.mp4").symlink_to("../../media/real.mp4")
    (root / "inputs" / "r" / "abs.mp4").symlink_to(root / "media" / "real.mp4")
    (root / "inputs" / "r" / "chain.mp4").symlink_to("alias.mp4")
    (root / "media-link").symlink_to("media", target_is_directory=True)
    (root / "inputs" / "r" / "via-folder-link.mp4").symlink_to("../../media-link/real.mp4")
    (root / "inputs" / "r" / "state.mp4").symlink_to("../../.dropgpu/etag-cache.sqlite3")
    (root / "inputs" / "r" / "loop.mp4").symlink_to("loop.mp4")
    (root / "inputs" / "r" / "dangling.mp4").symlink_to("nothing-here.mp4")
    (root / "inputs" / "r" / "folder.mp4").symlink_to("../../media")
    bucket = LocalFolderBucket(root)

    async def scenario() -> Listing:
        for key in ("inputs/r/alias.mp4", "inputs/r/abs.mp4", "inputs/r/chain.mp4"):
            assert await bucket.get_bytes(key) == b"real bytes"
        for key in ("via-folder-link.mp4", "state.mp4", "loop.mp4"):
            with pytest.raises(UnsafeKeyError):
                await bucket.get_bytes("inputs/r/" + key)
        with pytest.raises((UnsafeKeyError, ObjectNotFound)):
            await bucket.get_bytes("inputs/r/dangling.mp4")
        return await bucket.list("inputs/")

    listing = run(scenario())
    assert {o.key: o.etag for o in listing.objects} == {
        f"inputs/r/{n}.mp4": md5(b"real bytes") for n in ("abs", "alias", "chain")
    }
    kinds = {e.name: e.kind for e in listing.skipped}
    assert kinds == {
        "inputs/r/dangling.mp4": "symlink",
        "inputs/r/folder.mp4": "symlink",
        "inputs/r/loop.mp4": "symlink_loop",
        "inputs/r/state.mp4": "symlink",
        "inputs/r/via-folder-link.mp4": "symlink",
    }


def test_a_job_cannot_write_its_outputs_into_inputs_through_a_symlink(
    root: Path, tmp_path: Path
) -> None:
    """End to end: the runner's upload meets the link, fails, and every input survives."""
    proxy = root / "inputs" / "proxy"
    proxy.mkdir()
    (proxy / "copy.bin").write_bytes(b"an innocent input")  # named like the handler's output
    (proxy / "evil.mp4").write_bytes(b"the attacker's input")
    (root / "outputs" / "proxy").mkdir(parents=True)
    (root / "outputs" / "proxy" / "evil.mp4").symlink_to("../../inputs/proxy")
    config = make_config({"proxy": counting_route(tmp_path / "count", max_attempts=1)})
    bucket = LocalFolderBucket(root)

    _report, outcomes = run(tick_and_run(bucket, config, tmp_path))
    by_rel = {spec.rel: outcome for spec, outcome in outcomes}
    assert set(by_rel) == {"copy.bin", "evil.mp4"}
    assert by_rel["copy.bin"].status == JobStatus.SUCCEEDED
    # A place the store refuses for good is a failure at once, not a retry loop.
    assert by_rel["evil.mp4"].status == JobStatus.FAILED
    assert "symlink" in by_rel["evil.mp4"].message
    assert sorted(p.name for p in proxy.iterdir()) == ["copy.bin", "evil.mp4"]
    # The result lives in the done marker; the next tick has nothing left to do.
    again, _ = run(tick_and_run(bucket, config, tmp_path))
    assert not again.claimed and again.states[DecisionState.DONE] == 2
    assert (proxy / "copy.bin").read_bytes() == b"an innocent input"
    assert (proxy / "evil.mp4").read_bytes() == b"the attacker's input"


def test_a_symlink_at_a_claim_path_cannot_make_a_commit_unlink_inputs(
    root: Path, tmp_path: Path
) -> None:
    """End to end: a link planted at a predictable claim path; the inputs it names survive."""
    vertical = root / "inputs" / "vertical"
    vertical.mkdir()
    for name in ("a.bin", "b.bin"):
        (vertical / name).write_bytes(name.encode())
    (root / "inputs" / "proxy").mkdir()
    (root / "inputs" / "proxy" / "x.bin").write_bytes(b"x")
    ref = JobRef("proxy", "x.bin", md5(b"x"))
    claims = root / ref.claims_prefix.rstrip("/")
    claims.parent.mkdir(parents=True)
    claims.symlink_to(os.path.relpath(vertical, claims.parent))
    config = make_config(
        {
            "proxy": counting_route(tmp_path / "count"),
            "vertical": counting_route(tmp_path / "count"),
        }
    )
    bucket = LocalFolderBucket(root)

    _report, outcomes = run(tick_and_run(bucket, config, tmp_path))
    # The trapped job is not claimed (its claim cannot be written); the others run.
    assert sorted(spec.ref.input_key for spec, _ in outcomes) == [
        "inputs/vertical/a.bin",
        "inputs/vertical/b.bin",
    ]
    assert all(o.status == JobStatus.SUCCEEDED for _, o in outcomes)
    assert sorted(p.name for p in vertical.iterdir()) == ["a.bin", "b.bin"]
    assert (vertical / "a.bin").read_bytes() == b"a.bin"
    assert (root / "inputs" / "proxy" / "x.bin").read_bytes() == b"x"


# -- point 4: a FIFO swapped in at a claimed key ----------------------------------------------


def test_a_fifo_at_a_key_is_refused_at_once(root: Path, tmp_path: Path) -> None:
    (root / "inputs" / "r").mkdir()
    clip = root / "inputs" / "r" / "clip.mp4"
    clip.write_bytes(b"regular bytes")
    bucket = LocalFolderBucket(root)
    [obj] = run(bucket.list("inputs/")).objects
    # Swapped for a FIFO after the listing (after the claim), with no writer ever.
    clip.unlink()
    os.mkfifo(clip)

    def attempt(call: Callable[[], object]) -> BaseException:
        with pytest.raises(ObjectNotFound) as info:
            within(10, call, lambda: open_writer_end(clip))
        return info.value

    err = attempt(
        lambda: run(bucket.get_to_file(obj.key, tmp_path / "dl" / "clip", if_match=obj.etag))
    )
    assert "FIFO" in str(err)
    attempt(lambda: run(bucket.get_bytes(obj.key)))
    assert not (tmp_path / "dl" / "clip").exists()
    # The listing names it instead of hanging on it or dropping it silently.
    listing = within(10, lambda: run(bucket.list("inputs/")), lambda: open_writer_end(clip))
    assert listing.objects == []
    assert [(e.name, e.kind) for e in listing.skipped] == [("inputs/r/clip.mp4", "special_file")]


def test_a_job_whose_input_became_a_fifo_ends_instead_of_hanging(
    root: Path, tmp_path: Path
) -> None:
    (root / "inputs" / "count").mkdir()
    clip = root / "inputs" / "count" / "clip.bin"
    clip.write_bytes(b"regular bytes")
    config = make_config({"count": counting_route(tmp_path / "count")})
    bucket = LocalFolderBucket(root)
    claimed: list[JobSpec] = []
    run(run_tick(bucket, config, claimed.append))
    [spec] = claimed
    clip.unlink()
    os.mkfifo(clip)
    runner = JobRunner(
        bucket, scratch_root=tmp_path / "scratch", device=DeviceInfo("cpu"), worker_name="t"
    )
    outcome = within(60, lambda: run(runner.run(spec)), lambda: open_writer_end(clip))
    assert outcome.status != JobStatus.SUCCEEDED
    assert not (tmp_path / "count").exists()  # the handler never ran


# -- point 5: one bad entry never fails the listing ----------------------------------------


def test_symlink_loops_never_stop_a_listing_or_a_tick(root: Path, tmp_path: Path) -> None:
    count = root / "inputs" / "count"
    count.mkdir()
    (count / "good.bin").write_bytes(b"good")
    (count / "self.bin").symlink_to("self.bin")
    (count / "ping.bin").symlink_to("pong.bin")
    (count / "pong.bin").symlink_to("ping.bin")
    (count / "loopdir").symlink_to("loopdir")
    (root / "inputs" / "other").symlink_to("other")  # a route folder that is a loop
    config = make_config(
        {"count": counting_route(tmp_path / "c"), "other": counting_route(tmp_path / "c")}
    )
    bucket = LocalFolderBucket(root)

    listing = run(bucket.list("inputs/count/"))
    assert [o.key for o in listing.objects] == ["inputs/count/good.bin"]
    assert {e.name: e.kind for e in listing.skipped} == {
        "inputs/count/loopdir": "symlink_loop",
        "inputs/count/ping.bin": "symlink_loop",
        "inputs/count/pong.bin": "symlink_loop",
        "inputs/count/self.bin": "symlink_loop",
    }
    other = run(bucket.list("inputs/other/"))
    assert other.objects == [] and [e.name for e in other.skipped] == ["inputs/other/"]
    _report, outcomes = run(tick_and_run(bucket, config, tmp_path))
    assert [(s.ref.input_key, o.status) for s, o in outcomes] == [
        ("inputs/count/good.bin", JobStatus.SUCCEEDED)
    ]


# -- point 6: folders dropgpu may not read -------------------------------------------------


def unprivileged(fn: Callable[[], T]) -> T:
    """Run ``fn`` as a user that permission bits apply to.

    Root ignores them, and CI often runs as root: there ``fn`` runs in a forked
    child that has dropped to ``nobody``, so the real EACCES paths are exercised
    either way. The result comes back pickled.
    """
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = pickle.dumps(("ok", fn()))
        except BaseException as e:
            payload = pickle.dumps(("error", f"{type(e).__name__}: {e}"))
        with os.fdopen(w, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    if status != "ok":
        pytest.fail(f"unprivileged child failed: {value}")
    return value  # type: ignore[no-any-return]


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A bucket folder the unprivileged user of ``unprivileged`` owns (tmp_path is root's)."""
    base = Path(tempfile.mkdtemp(prefix="dropgpu-perm-"))
    r = base / "bucket"
    (r / "inputs").mkdir(parents=True)
    try:
        yield r
    finally:
        for dirpath, dirs, _files in os.walk(base):
            for d in dirs:
                os.chmod(Path(dirpath) / d, 0o755, follow_symlinks=False)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def hand_over(root: Path) -> None:
    """Give the tree to ``nobody`` when we are root (so chmod 000 binds its owner too)."""
    if os.geteuid() != 0:
        return
    os.chown(root.parent, NOBODY, NOBODY)
    for dirpath, dirs, files in os.walk(root):
        os.chown(dirpath, NOBODY, NOBODY)
        for name in dirs + files:
            os.chown(Path(dirpath) / name, NOBODY, NOBODY, follow_symlinks=False)


def test_an_unreadable_folder_is_skipped_and_the_rest_listed(shared_root: Path) -> None:
    route = shared_root / "inputs" / "count"
    (route / "locked").mkdir(parents=True)
    (route / "locked" / "hidden.bin").write_bytes(b"h")
    (route / "good.bin").write_bytes(b"good")
    (route / "secret.bin").write_bytes(b"s")
    hand_over(shared_root)
    os.chmod(route / "locked", 0)
    os.chmod(route / "secret.bin", 0)

    listing = unprivileged(lambda: run(LocalFolderBucket(shared_root).list("inputs/")))
    assert [o.key for o in listing.objects] == ["inputs/count/good.bin"]
    assert {e.name: e.kind for e in listing.skipped} == {
        "inputs/count/locked/": "unreadable",
        "inputs/count/secret.bin": "unreadable",
    }
    assert all("permission denied" in e.reason for e in listing.skipped)


def test_an_unreadable_route_folder_lists_empty_with_a_reason(shared_root: Path) -> None:
    (shared_root / "inputs" / "count").mkdir()
    (shared_root / "inputs" / "count" / "a.bin").write_bytes(b"a")
    (shared_root / "inputs" / "fine").mkdir()
    (shared_root / "inputs" / "fine" / "b.bin").write_bytes(b"b")
    hand_over(shared_root)
    os.chmod(shared_root / "inputs" / "count", 0)

    def both() -> tuple[Listing, Listing]:
        bucket = LocalFolderBucket(shared_root)
        return run(bucket.list("inputs/count/")), run(bucket.list("inputs/fine/"))

    locked, fine = unprivileged(both)
    assert locked.objects == []
    assert [(e.name, e.kind) for e in locked.skipped] == [("inputs/count/", "unreadable")]
    assert [o.key for o in fine.objects] == ["inputs/fine/b.bin"]


# -- point 11: names that cannot be keys, and special files, are reported, not warned --------


def test_entries_that_cannot_be_objects_are_reported_once_per_listing(root: Path) -> None:
    r = root / "inputs" / "r"
    r.mkdir()
    (r / "good.mp4").write_bytes(b"good")
    raw = os.fsencode(r)
    names = {
        b"new\nline.mp4": "inputs/r/new\\nline.mp4",
        b"back\\slash.mp4": "inputs/r/back\\\\slash.mp4",
        b"bell\x07.mp4": "inputs/r/bell\\x07.mp4",
        b"caf\xe9.mp4": "inputs/r/caf\\xe9.mp4",
        b"bad\x1bfolder": "inputs/r/bad\\x1bfolder/",
    }
    for name in names:
        if name.endswith(b"folder"):
            os.mkdir(raw + b"/" + name)
            Path(os.fsdecode(raw + b"/" + name + b"/inside.mp4")).write_bytes(b"x")
        else:
            Path(os.fsdecode(raw + b"/" + name)).write_bytes(b"x")
    os.mkfifo(r / "pipe.mp4")
    os.mknod(r / "sock.mp4", stat.S_IFSOCK | 0o600)
    (r / "out.mp4").symlink_to("/etc/hostname")
    bucket = LocalFolderBucket(root)

    with capture_logs() as logs:
        listing = run(bucket.list("inputs/"))
        again = run(bucket.list("inputs/"))
    assert [o.key for o in listing.objects] == ["inputs/r/good.mp4"]
    kinds = {e.name: e.kind for e in listing.skipped}
    assert kinds == {
        **{shown: "unaddressable_name" for shown in names.values()},
        "inputs/r/pipe.mp4": "special_file",
        "inputs/r/sock.mp4": "special_file",
        "inputs/r/out.mp4": "symlink",
    }
    assert all(e.name.isprintable() and e.reason for e in listing.skipped)
    assert again.skipped == listing.skipped
    # The bucket no longer warns per listing: the control plane reports Listing.skipped.
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []


# -- point 14: a copy that stalls is not claimed half-written ------------------------------

WRITER = r"""
import os, sys
with open(sys.argv[1], "wb") as f:
    f.write(b"A" * 1000)
    f.flush()
    print("half", flush=True)
    sys.stdin.readline()          # stall, the file open, until told to go on
    f.write(b"B" * 1000)
print("done", flush=True)
"""


def start_writer(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "half\n"
    return proc


def finish_writer(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "done\n"
    proc.wait(30)


def backdate(path: Path, seconds: float) -> None:
    """A stall longer than settle_seconds, without waiting for it."""
    old = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(old, old))


def test_a_file_open_for_writing_keeps_settling(root: Path) -> None:
    (root / "inputs" / "r").mkdir()
    path = root / "inputs" / "r" / "copy.bin"
    writer = start_writer(path)
    try:
        backdate(path, 3600)
        bucket = LocalFolderBucket(root)
        for b in (bucket, LocalFolderBucket(root)):  # a fresh process-like object too
            listing = run(b.list("inputs/r/"))
            [obj] = listing.objects
            assert obj.size == 1000
            assert listing.server_time - obj.last_modified < timedelta(seconds=60)
    finally:
        finish_writer(writer)
    backdate(path, 3600)
    [obj] = run(bucket.list("inputs/r/")).objects
    assert (obj.size, obj.etag) == (2000, md5(b"A" * 1000 + b"B" * 1000))
    assert datetime.now(UTC) - obj.last_modified > timedelta(minutes=30)


def test_a_stalled_copy_is_claimed_only_once_complete(root: Path, tmp_path: Path) -> None:
    (root / "inputs" / "count").mkdir()
    path = root / "inputs" / "count" / "slow.bin"
    config = make_config({"count": counting_route(tmp_path / "c", settle_seconds=0.5)})
    bucket = LocalFolderBucket(root)
    writer = start_writer(path)
    try:
        backdate(path, 3600)  # stalled for an hour, far past settle_seconds
        for _ in range(3):
            report, outcomes = run(tick_and_run(bucket, config, tmp_path))
            assert outcomes == [] and report.states[DecisionState.SETTLING] == 1
    finally:
        finish_writer(writer)
    deadline = time.monotonic() + 30
    outcomes = []
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.2)
        _report, outcomes = run(tick_and_run(bucket, config, tmp_path))
    [(spec, outcome)] = outcomes
    assert outcome.status == JobStatus.SUCCEEDED
    full = b"A" * 1000 + b"B" * 1000
    assert (spec.etag, spec.size) == (md5(full), len(full))


def test_without_leases_two_looks_tell_a_changing_file(tmp_path: Path) -> None:
    """Where no lease can be taken (an opener that cannot open stands for that here),
    a stat that moved between two looks of one bucket object still means 'writing'."""
    tracker = WriteTracker(tmp_path / "state")

    def cannot_open() -> int:
        raise PermissionError(13, "Permission denied")

    st1, st2 = FileStat(1000, 1, 7, 1), FileStat(2000, 2, 7, 2)
    looks = []
    for st in (st1, st1, st2, st2):
        look = tracker.look("inputs/", remember=True)
        looks.append(look.being_written("inputs/a", st, cannot_open))
        look.done()
    assert looks == [False, False, True, False]


def test_a_lease_probe_on_someone_elses_file_says_unknown() -> None:
    """Never 'closed' when it cannot know: a file of another user, without CAP_LEASE."""
    if os.geteuid() != 0:
        pytest.skip("needs a file owned by another user, which only root can make")
    base = Path(tempfile.mkdtemp(prefix="dropgpu-lease-"))
    path = base / "f"
    base.chmod(0o755)
    path.write_bytes(b"x")
    path.chmod(0o644)
    try:
        _probe_verdicts(path)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _probe_verdicts(path: Path) -> None:
    with open(path, "ab"):  # root holds it open for writing

        def probe() -> str:
            fd = os.open(path, os.O_RDONLY)
            try:
                return write_verdict(fd).value
            finally:
                os.close(fd)

        assert unprivileged(probe) == Verdict.UNKNOWN.value
        fd = os.open(path, os.O_RDONLY)
        try:
            assert write_verdict(fd) is Verdict.OPEN
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert write_verdict(fd) is Verdict.CLOSED
    finally:
        os.close(fd)


def test_the_lease_self_check_passes_on_a_local_folder(tmp_path: Path) -> None:
    """The once-per-bucket check that decides whether leases are trusted at all."""
    if not sys.platform.startswith("linux"):
        pytest.skip("file leases are Linux-only; elsewhere only the two-look rule applies")
    assert leases_work(tmp_path / "state") is True
    assert list((tmp_path / "state").iterdir()) == []  # its probe file is gone


def test_a_bucket_folder_removed_under_a_running_bucket_is_a_config_error(root: Path) -> None:
    bucket = LocalFolderBucket(root)
    shutil.rmtree(root)

    async def scenario() -> None:
        for call in (
            bucket.list("inputs/"),
            bucket.put_bytes("outputs/x", b"x"),
            bucket.get_bytes("outputs/x"),
            bucket.delete("outputs/x"),
        ):
            with pytest.raises(BucketConfigError, match="no longer exists"):
                await call

    run(scenario())
