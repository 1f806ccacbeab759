"""The CLI's streams and signals, in real processes.

- A closed stdout pipe (``dropgpu status --json | head -c0``) ends every printing
  command quietly: no traceback, no "Exception ignored", the command's exit code.
- ``feed --follow`` and ``watch`` stop cleanly on SIGINT and SIGTERM however they
  were started, also as a background job of a non-interactive shell, which starts
  them with SIGINT ignored.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.contract.keys import FEED, JobRef
from handlers.jobs.commit import commit
from tests.conftest import BucketSpec
from tests.pipeline_helpers import COUNTING, REPO, cli_env, keys_under

CLI = [sys.executable, "-m", "watcher.cli"]


def _fill_feed(root: Path, n: int = 3) -> list[str]:
    async def fill() -> list[str]:
        async with BucketSpec("local", str(root)).open() as bucket:
            for i in range(n):
                ref = JobRef("count", f"clip {i}.bin", f"etag{i}")
                assert await commit(bucket, ref, b'{"status": "succeeded"}', failed=False)
            return await keys_under(bucket, FEED)

    return asyncio.run(fill())


@pytest.fixture
def bucket_root(tmp_path: Path) -> Path:
    root = tmp_path / "bucket"
    (root / "inputs" / "count").mkdir(parents=True)
    (root / "inputs" / "count" / "a.bin").write_bytes(b"a")
    return root


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "dropgpu.toml"
    path.write_text(
        f"""
[watch]
interval_seconds = 0.2

[routes.vertical]
enabled = false

[routes.count]
handler = "{COUNTING}"
settle_seconds = 0
params = {{ counter_dir = "{tmp_path / "runs"}" }}
"""
    )
    return path


def _run_into_closed_pipe(
    args: list[str], cwd: Path, *, buffered: bool
) -> subprocess.CompletedProcess[str]:
    """Run ``dropgpu ARGS`` with stdout a pipe whose read end is already closed."""
    env = cli_env()
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:  # as in most containers: every print is a write
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before the first byte: every write is EPIPE
    try:
        return subprocess.run(
            [*CLI, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=env,
            cwd=cwd,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_every_printing_command_ends_quietly_on_a_closed_pipe(
    tmp_path: Path, bucket_root: Path, buffered: bool
) -> None:
    _fill_feed(bucket_root)
    cfg = str(_config(tmp_path))
    bucket = ["--bucket", str(bucket_root)]
    commands = {
        "status --json": (["status", "--json", "--config", cfg, *bucket], 0),
        "status": (["status", "--config", cfg, *bucket], 0),
        # "skipped" (not finished yet), exit 1 with a reader; with none, the report is
        # lost and so is its code (0, buffered or not: the same for every command).
        "retry": (["retry", "inputs/count/a.bin", "--config", cfg, *bucket], 0),
        "feed": (["feed", *bucket], 0),
        "feed --json --follow": (["feed", "--json", "--follow", "--poll", "0.1", *bucket], 0),
        "models list": (["models", "list", "--dir", str(tmp_path / "models")], 0),
        "deploy --dry-run": (["deploy", "--dry-run", "--config", cfg], 0),
        "--version": (["--version"], 0),
        "status --help": (["status", "--help"], 0),
    }
    for name, (args, code) in commands.items():
        done = _run_into_closed_pipe(args, tmp_path, buffered=buffered)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        assert "BrokenPipe" not in done.stderr and "Exception ignored" not in done.stderr, name
        assert done.returncode == code, (name, done.returncode, done.stderr[-2000:])


def test_a_reader_leaving_mid_stream_ends_feed(tmp_path: Path, bucket_root: Path) -> None:
    # The shell form of the attack: `dropgpu feed --follow | head -n1` must end by itself.
    keys = _fill_feed(bucket_root)
    feed = shlex.join([*CLI, "feed", "--follow", "--poll", "0.1", "--bucket", str(bucket_root)])
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {feed} | head -n1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("\n") == 1 and "inputs/count/clip 0.bin" in done.stdout
    assert "Traceback" not in done.stderr and len(keys) == 3


def _background(command: list[str], signame: str, ready: str, cwd: Path) -> tuple[str, str]:
    """A non-interactive shell starts ``command`` as a background job (so with SIGINT
    ignored), waits for ``ready`` in its output, sends SIG``signame`` and reports how
    it ended: (shell report, the command's stdout + stderr). A command still running
    20 s after the signal is killed and reported as hung, so a hang fails, never blocks.
    """
    out, err = cwd / f"bg-{signame}.out", cwd / f"bg-{signame}.err"
    q = shlex.quote
    script = f"""
{shlex.join(command)} >{q(str(out))} 2>{q(str(err))} &
pid=$!
for _ in $(seq 600); do
  grep -q {q(ready)} {q(str(out))} {q(str(err))} 2>/dev/null && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
kill -{signame} $pid
for _ in $(seq 200); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then echo hung; kill -KILL $pid; fi
wait $pid
echo "exit=$?"
"""
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, env=cli_env(), cwd=REPO
    )
    return done.stdout + done.stderr, out.read_text(errors="replace") + err.read_text(
        errors="replace"
    )


@pytest.mark.parametrize("signame", ["INT", "TERM"])
def test_feed_follow_started_in_the_background_stops_on_a_signal(
    tmp_path: Path, bucket_root: Path, signame: str
) -> None:
    _fill_feed(bucket_root)
    command = [*CLI, "feed", "--follow", "--json", "--poll", "0.1", "--bucket", str(bucket_root)]
    # Ready once it printed the records, i.e. it is following.
    report, output = _background(command, signame, "clip 2.bin", tmp_path)
    assert report.strip() == "exit=0", (report, output[-2000:])
    assert "Traceback" not in output
    printed = [
        json.loads(line)
        for line in (tmp_path / f"bg-{signame}.out").read_text().split("\n")
        if line
    ]
    assert [r["input_key"] for r in printed] == [f"inputs/count/clip {i}.bin" for i in range(3)]


@pytest.mark.parametrize("signame", ["INT", "TERM"])
def test_watch_started_in_the_background_stops_on_a_signal(
    target: BucketSpec, tmp_path: Path, signame: str
) -> None:
    config = str(_config(tmp_path))
    command = [*CLI, "watch", "--workers", "1", "--config", config, *target.cli_args]
    report, output = _background(command, signame, "Ctrl-C once", tmp_path)
    assert report.strip() == "exit=0", (report, output[-2000:])
    assert "Traceback" not in output
