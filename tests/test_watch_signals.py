"""Ctrl-C and SIGTERM as a terminal and a supervisor send them: to the whole process group.

`dropgpu watch` runs in its own session, so the test is its terminal: ``os.killpg``
on the watcher's group is what Ctrl-C (SIGINT) or a group-wide SIGTERM does. The
job spends its time in a real ffmpeg child (tests/handlers_with_children.py).

Promised (docs/operations.md): once, the running job finishes and commits;
twice, it is released without using an attempt and `watch` exits 130. Either
way no worker or ffmpeg outlives the watcher.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BucketSpec
from tests.media import make_video
from tests.pipeline_helpers import (
    COUNTING,
    keys_under,
    popen_cli,
    put_bytes,
    put_file,
    read_manifest,
    run,
    run_cli,
)

REALTIME = "tests.handlers_with_children:RealtimeFfmpegHandler"
KEY = "inputs/clip/a.mp4"
MANIFEST = "outputs/clip/a.mp4/manifest.json"


def _config(path: Path, markers: Path, *, seconds: float, handler: str = REALTIME) -> Path:
    params = (
        f'{{ marker_dir = "{markers}", duration_s = {seconds} }}'
        if handler == REALTIME
        else f'{{ counter_dir = "{markers / "runs"}" }}'
    )
    # max_attempts = 1: a job that failed (or burned its attempt) would give up, so a
    # second run succeeding proves the interrupted attempt was given back.
    path.write_text(
        f"""
[watch]
lease_ttl_seconds = 20
interval_seconds = 0.5
backoff_base_seconds = 0
backoff_max_seconds = 0

[routes.vertical]
enabled = false

[routes.clip]
handler = "{handler}"
settle_seconds = 0
max_attempts = 1
params = {params}
"""
    )
    return path


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgid, sid) of a live process, None when gone (zombies count as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    state, pgid, sid = fields[0], int(fields[2]), int(fields[3])
    return None if state in ("Z", "X") else (state, pgid, sid)


def _in_session(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and (st[2] == sid or st[1] == sid):
                pids.append(int(entry.name))
    return pids


def _wait_for(
    predicate: Callable[[], bool], what: str, proc: subprocess.Popen[str], limit: float = 90
) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"watch exited before {what}: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _assert_no_orphans(pids: list[int], watcher_pid: int, limit: float = 15) -> None:
    """The processes seen during the job, and everything in the watcher's group, are gone."""
    deadline = time.monotonic() + limit
    while True:
        left = [p for p in pids if _stat(p) is not None]
        left += [p for p in _in_session(watcher_pid) if p != os.getpid()]
        left += [p for w in pids for p in _in_session(w)]  # a worker's own session, if any
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes outlived the watcher: {sorted(set(left))}")
        time.sleep(0.1)


class Job:
    """One watcher on one real ffmpeg job; ``start`` returns when ffmpeg is running."""

    def __init__(self, target: BucketSpec, tmp_path: Path, seconds: float) -> None:
        self.target = target
        self.tmp = tmp_path
        self.markers = tmp_path / "markers"
        self.config = _config(tmp_path / "dropgpu.toml", self.markers, seconds=seconds)
        clip = make_video(
            tmp_path / "clip.mp4", seconds=seconds, size=(64, 48), fps=10, audio=False
        )

        async def drop() -> None:
            async with target.open() as bucket:
                await put_file(bucket, KEY, clip)

        run(drop())
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        args = ["watch", "--workers", "1", "--config", str(self.config), *self.target.cli_args]
        self.proc = proc = popen_cli(args)  # its own session: this test is its terminal
        _wait_for((self.markers / "ffmpeg-running").exists, "ffmpeg to run", proc)
        return proc

    def workers(self) -> list[int]:
        return [int(p.name.split("-")[1]) for p in self.markers.glob("worker-*")]

    def ffmpeg_pids(self) -> list[int]:
        """The ffmpeg processes the workers run now."""
        found = []
        for pid in [c for w in self.workers() for c in _children(w)]:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip().startswith("ffmpeg"):
                    found.append(pid)
        return found

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for w in self.workers():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w, signal.SIGKILL)

    def claims(self) -> list[str]:
        async def go() -> list[str]:
            async with self.target.open() as bucket:
                return await keys_under(bucket, "_dropgpu/claims/")

        return run(go())

    def manifest(self) -> dict[str, object]:
        async def go() -> dict[str, object]:
            async with self.target.open() as bucket:
                return await read_manifest(bucket, MANIFEST)

        return run(go())


JobFactory = Callable[[BucketSpec, float], Job]


@pytest.fixture
def job_factory(tmp_path: Path) -> Iterator[JobFactory]:
    jobs: list[Job] = []

    def make(target: BucketSpec, seconds: float) -> Job:
        jobs.append(Job(target, tmp_path, seconds))
        return jobs[-1]

    yield make
    for j in jobs:
        j.cleanup()


@pytest.mark.parametrize("bucket_spec", ["local"], indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_one_group_signal_lets_the_running_ffmpeg_job_finish_and_commit(
    target: BucketSpec, job_factory: JobFactory, sig: signal.Signals
) -> None:
    job = job_factory(target, 3)
    proc = job.start()
    ffmpeg = job.ffmpeg_pids()
    assert ffmpeg, "the job's ffmpeg should be running"
    os.killpg(proc.pid, sig)  # Ctrl-C in a terminal / a supervisor's group SIGTERM
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    m = job.manifest()
    assert m["status"] == "succeeded", m["error"]
    assert m["attempts"] == 1
    assert job.claims() == []
    _assert_no_orphans(job.workers() + ffmpeg, proc.pid)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_two_group_signals_release_the_job_without_using_an_attempt(
    target: BucketSpec, job_factory: JobFactory, sig: signal.Signals, tmp_path: Path
) -> None:
    if target.kind == "s3" and sig == signal.SIGTERM:
        pytest.skip("the signal path does not depend on the backend; SIGINT covers S3")
    job = job_factory(target, 30)
    proc = job.start()
    ffmpeg = job.ffmpeg_pids()
    assert ffmpeg
    os.killpg(proc.pid, sig)
    time.sleep(0.5)
    assert proc.poll() is None, "the first signal must let the running job go on"
    assert job.ffmpeg_pids(), "ffmpeg must survive the first signal"
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "released 1 unfinished job" in err
    claims = job.claims()
    assert any(k.endswith("attempt-1.released") for k in claims), claims
    _assert_no_orphans(job.workers() + ffmpeg, proc.pid)

    # With max_attempts = 1 the job still runs: the released attempt used up nothing.
    fast = _config(tmp_path / "fast.toml", tmp_path / "fast", seconds=0, handler=COUNTING)
    again = run_cli(["watch", "--once", "--config", str(fast), *target.cli_args])
    assert again.returncode == 0, again.stderr[-3000:]
    m = job.manifest()
    assert m["status"] == "succeeded" and m["attempts"] == 2, m["error"]


@pytest.mark.parametrize("bucket_spec", ["local"], indirect=True)
def test_a_killed_watcher_takes_its_workers_and_their_ffmpeg_along(
    target: BucketSpec, job_factory: JobFactory
) -> None:
    job = job_factory(target, 30)
    proc = job.start()
    workers, ffmpeg = job.workers(), job.ffmpeg_pids()
    assert workers and ffmpeg
    os.kill(proc.pid, signal.SIGKILL)  # the watcher alone: no cleanup code of its runs
    proc.wait()
    _assert_no_orphans(workers + ffmpeg, proc.pid)


@pytest.mark.parametrize("bucket_spec", ["local"], indirect=True)
def test_sigterm_to_every_python_process_is_left_to_the_watcher(
    target: BucketSpec, tmp_path: Path
) -> None:
    """systemd's KillMode=control-group signals each process of the unit itself: the
    workers leave it to the watcher (ffmpeg cannot; docs/operations.md: KillMode=mixed)."""
    from tests.handlers_for_tests import executions
    from tests.test_torture import worker_pids
    from tests.test_watch_cli import counting_toml

    counter = tmp_path / "runs"
    config = counting_toml(tmp_path / "dropgpu.toml", counter, ttl=20, sleep_s=3)

    async def drop() -> None:
        async with target.open() as bucket:
            await put_bytes(bucket, "inputs/count/a.bin", b"a")

    run(drop())
    proc = popen_cli(["watch", "--workers", "1", "--config", str(config), *target.cli_args])
    _wait_for(lambda: executions(counter) > 0, "the job to start", proc)
    workers = worker_pids(proc.pid)
    assert workers
    for pid in [proc.pid, *workers]:
        os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]

    async def check() -> None:
        async with target.open() as bucket:
            m = await read_manifest(bucket, "outputs/count/a.bin/manifest.json")
            assert m["status"] == "succeeded" and m["attempts"] == 1

    run(check())
    _assert_no_orphans(workers, proc.pid)
