"""CLI conventions: global options, shared options, dispatch, validators, exit codes,
and the one rule for which dropgpu.toml a command reads. In-process; the CLI's
behaviour against a real bucket is in test_watch_cli.py and test_feed.py."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gpu.exceptions import GpuError, ModelNotFoundError
from handlers.contract.consumer import ConsumerError
from handlers.exceptions import HandlerError
from infra.errors import DropgpuError
from infra.log import FORMAT_ENV, LEVEL_ENV, configure_logging
from infra.storage.errors import BucketConfigError, ObjectNotFound, TransientStorageError
from infra.version import dropgpu_version
from watcher.cli.errors import ExitCode, error_line, exit_code, one_line_errors
from watcher.cli.main import _configure_logging, build_parser, main
from watcher.config import DEFAULT_CONFIG_FILE, config_file, load_config
from watcher.exceptions import ConfigError, UnsafeStoreError

REPO = Path(__file__).resolve().parents[1]

# One argv per leaf command: the least each needs to parse.
COMMANDS = {
    "watch": ["watch"],
    "status": ["status"],
    "retry": ["retry", "inputs/vertical/a.mp4"],
    "doctor": ["doctor"],
    "sample": ["sample", "clip.mp4"],
    "models list": ["models", "list"],
    "models pull": ["models", "pull", "htdemucs"],
    "deploy": ["deploy"],
    "feed": ["feed"],
}
TAKES_BUCKET = {"watch", "status", "retry", "doctor", "feed"}
TAKES_CONFIG = {"watch", "status", "retry", "doctor", "deploy"}


@pytest.fixture(autouse=True)
def _clean_log_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # main() exports the log flags for its worker processes; keep that inside each test.
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    monkeypatch.delenv(FORMAT_ENV, raising=False)
    yield
    configure_logging(json=False)


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _options(argv: list[str]) -> set[str]:
    """Option strings of the leaf parser ``argv`` names."""
    parser = build_parser()
    for word in argv:
        subparsers = next(
            (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
        )
        if subparsers is None or word not in subparsers.choices:
            break
        parser = subparsers.choices[word]
    return {s for action in parser._actions for s in action.option_strings}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"dropgpu {dropgpu_version()}\n"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_dispatches_through_func(name: str) -> None:
    args = _parse(COMMANDS[name])
    assert callable(args.func)
    if name.startswith("models"):
        assert callable(args.models_func)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_options_where_they_belong(name: str) -> None:
    options = _options(COMMANDS[name])
    command = name.split()[0]
    assert ({"--bucket", "--endpoint-url"} <= options) == (command in TAKES_BUCKET)
    assert ("--config" in options) == (command in TAKES_CONFIG)
    assert {"-v", "--verbose", "--log-level", "--log-format"} <= options


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_global_options_before_or_after_the_command(name: str) -> None:
    argv = COMMANDS[name]
    for args in (
        _parse(["-v", "--log-format", "json", *argv]),
        _parse([*argv, "-v", "--log-format", "json"]),
    ):
        assert args.verbose == 1 and args.log_format == "json"
    # Given before the command and not repeated after it: not reset by the subcommand.
    args = _parse(["--log-level", "warning", *argv])
    assert args.log_level == "WARNING" and args.verbose == 0
    args = _parse(argv)
    assert args.log_level is None and args.log_format is None and args.verbose == 0


def test_bad_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--log-level", "loud", "status"])
    assert done.value.code == ExitCode.USAGE
    assert "invalid choice: 'LOUD'" in capsys.readouterr().err


def _debug_enabled() -> bool:
    stream = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=stream))
    structlog.get_logger("t").debug("probe_line")
    return "probe_line" in stream.getvalue()


@pytest.mark.parametrize(
    ("argv", "env_level", "debug", "exported"),
    [
        ([], None, False, None),
        (["-v"], None, True, "DEBUG"),
        (["-vv"], None, True, "DEBUG"),
        ([], "DEBUG", True, "DEBUG"),  # the env var stays the default
        (["--log-level", "error"], "DEBUG", False, "ERROR"),  # the flag wins over it
        (["-v", "--log-level", "info"], None, False, "INFO"),  # and over -v
    ],
)
def test_log_level_flags(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env_level: str | None,
    debug: bool,
    exported: str | None,
) -> None:
    if env_level:
        monkeypatch.setenv(LEVEL_ENV, env_level)
    _configure_logging(_parse([*argv, "status"]))
    assert _debug_enabled() == debug
    assert os.environ.get(LEVEL_ENV) == exported  # what spawned workers inherit


def test_log_format_flag(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv(FORMAT_ENV, "console")
    _configure_logging(_parse(["--log-format", "json", "status"]))
    structlog.get_logger("t").info("format_probe", n=1)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "format_probe" and line["n"] == 1
    assert os.environ[FORMAT_ENV] == "json"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["watch", "--workers", "0"], "--workers must be at least 1"),
        (["watch", "--interval", "0"], "--interval must be positive"),
        (["sample", "clip.mp4", "--seconds", "601"], "--seconds must be between 0 and 600"),
        (["feed", "--poll", "-1"], "--poll must be positive"),
        (["feed", "--overlap", "86401"], "--overlap must be between 0 and 86400 seconds"),
        (["feed", "--route", "Bad/Route"], "--route 'Bad/Route': not a route name"),
        (["feed", "--since", "last tuesday"], "--since 'last tuesday': expected a feed key"),
    ],
)
def test_out_of_range_values_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"dropgpu: {message}") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ('handler = "subprocess:Popen"', "routes.x: handler: 'subprocess:Popen' does not"),
        (
            'handler = "vertical"\nnotify_url = "http://127.0.0.1:99999/x"',
            "routes.x: notify_url: Value error, its port is out of range (1-65535)",
        ),
    ],
)
def test_a_bad_handler_or_webhook_url_is_a_config_error_not_a_traceback(
    tmp_path: Path, route: str, message: str
) -> None:
    # In a real process: what a user sees, whatever in-process state a test has.
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text(f"[routes.x]\n{route}\n")
    for command in (["status"], ["watch", "--once"]):
        done = subprocess.run(
            [sys.executable, "-m", "watcher.cli", *command, "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith(f"dropgpu: {cfg}: {message}")
        assert done.stderr.count("\n") == 1
        assert not (tmp_path / "bucket").exists()  # stopped before touching the bucket


def test_unparsable_values_stay_argparse_usage_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["watch", "--workers", "two"])
    assert done.value.code == ExitCode.USAGE
    assert "argument --workers: invalid int value: 'two'" in capsys.readouterr().err


def test_valid_values_parse_to_their_types() -> None:
    args = _parse(["watch", "--workers", "3", "--interval", "0.5"])
    assert (args.workers, args.interval) == (3, 0.5)
    args = _parse(["feed", "--route", "vertical", "--since", "15m", "--overlap", "0"])
    assert args.route == "vertical" and args.overlap == 0.0 and args.since is not None


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (ConfigError("routes.x: bad"), ExitCode.USAGE, "dropgpu: routes.x: bad"),
        (UnsafeStoreError("b: unsafe"), ExitCode.USAGE, "dropgpu: b: unsafe"),
        (BucketConfigError("no such bucket"), ExitCode.USAGE, "dropgpu: no such bucket"),
        (ConsumerError("--since x"), ExitCode.USAGE, "dropgpu: --since x"),
        (ModelNotFoundError("no htdemucs"), ExitCode.USAGE, "dropgpu: no htdemucs"),
        (
            TransientStorageError("503"),
            ExitCode.FAILED,
            "dropgpu: storage error: 503 (try again; check the endpoint)",
        ),
        (
            ObjectNotFound("k"),
            ExitCode.FAILED,
            "dropgpu: storage error: k (try again; check the endpoint)",
        ),
        (HandlerError("ffmpeg failed"), ExitCode.FAILED, "dropgpu: ffmpeg failed"),
        (GpuError("no ffmpeg"), ExitCode.FAILED, "dropgpu: no ffmpeg"),
        (DropgpuError("other"), ExitCode.FAILED, "dropgpu: other"),
    ],
)
def test_every_package_error_maps_to_one_line_and_a_code(
    exc: DropgpuError, code: ExitCode, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(exc) == code and error_line(exc) == line

    @one_line_errors()
    def command() -> int:
        raise exc

    assert command() == code
    assert capsys.readouterr().err == line + "\n"


def test_unexpected_errors_keep_their_traceback_and_ctrl_c_is_130() -> None:
    @one_line_errors()
    def buggy() -> int:
        raise ValueError("a bug")

    @one_line_errors()
    def interrupted() -> int:
        raise KeyboardInterrupt

    with pytest.raises(ValueError, match="a bug"):
        buggy()
    assert interrupted() == ExitCode.INTERRUPTED == 130


def test_the_exit_code_table_in_the_docs_matches_the_code() -> None:
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\d+)` \| `(\w+)` \|", section, flags=re.MULTILINE)
    assert rows == [(str(int(c)), c.name) for c in ExitCode]


def test_the_feed_command_has_no_standalone_entry() -> None:
    import watcher.cli.feed as feed

    assert not hasattr(feed, "main")  # `dropgpu feed` is the one way in


# -- which dropgpu.toml -------------------------------------------------------------------


def test_config_file_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_file(None) is None and config_file("") is None
    assert load_config(None).source == "built-in defaults"
    (tmp_path / DEFAULT_CONFIG_FILE).write_text("[watch]\ninterval_seconds = 3\n")
    assert config_file(None) == tmp_path / DEFAULT_CONFIG_FILE
    assert load_config(None).watch.interval_seconds == 3
    assert load_config(None).source == DEFAULT_CONFIG_FILE  # named as the user knows it
    # An explicit file wins, relative to the working folder, with ~ expanded.
    assert config_file("other.toml") == tmp_path / "other.toml"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "mine.toml").write_text("[watch]\ninterval_seconds = 4\n")
    assert config_file("~/mine.toml") == tmp_path / "home" / "mine.toml"
    assert load_config("~/mine.toml").watch.interval_seconds == 4
    with pytest.raises(ConfigError, match=r"^config file other\.toml does not exist$"):
        load_config("other.toml")


def test_deploy_and_the_modal_app_use_the_same_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    import infra.deploy.command as command

    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_CONFIG_FILE).write_text("")
    assert command.config_file is config_file
    monkeypatch.delenv("DROPGPU_CONFIG", raising=False)
    app = sys.modules.get("infra.deploy.modal_app") or importlib.import_module(
        "infra.deploy.modal_app"
    )
    assert app.config_path() == config_file(None) == tmp_path / DEFAULT_CONFIG_FILE
    monkeypatch.setenv("DROPGPU_CONFIG", "~/deployed.toml")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert app.config_path() == config_file("~/deployed.toml") == tmp_path / "deployed.toml"
