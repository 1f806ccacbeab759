"""handlers.media.ffmpeg_run: hardening flags, progress, timeouts, error classification."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gpu.ffmpeg_binary import ffmpeg_exe, ffmpeg_version
from handlers.exceptions import HandlerConfigError, InputError, MediaToolError, TransientError
from handlers.media.ffmpeg_run import (
    HEAD_CHARS,
    FfmpegTimeoutError,
    classify_failure,
    failure_error,
    ffmpeg_number,
    file_url,
    harden_args,
    input_args,
    media_input,
    run_ffmpeg,
    scrub,
)
from tests.media import make_ffconcat_disguise, make_text_as_media, make_video


def _deadline(seconds: float = 120) -> float:
    return time.monotonic() + seconds


def test_binary_and_version() -> None:
    assert Path(ffmpeg_exe()).is_file()
    assert ffmpeg_version() not in ("", "unknown")


def test_input_args_are_file_urls_under_a_whitelist(tmp_path: Path) -> None:
    args = input_args(tmp_path / "in put.mp4")
    assert args[-2:] == ["-i", f"file:{tmp_path}/in put.mp4"]
    assert args[args.index("-protocol_whitelist") + 1] == "file"
    assert "concat" not in args[args.index("-format_whitelist") + 1].split(",")
    assert file_url("rel.mp4").startswith("file:/")  # always absolute


def test_media_input_is_the_same_hardened_input(tmp_path: Path) -> None:
    src = tmp_path / "in put.mp4"
    args = (
        media_input(src, hw_args=["-hwaccel", "cuda"], ss="1.5")
        .output(file_url(tmp_path / "o.mp4"))
        .get_args()
    )
    i = args.index("-i")
    assert args[i + 1] == f"file:{src}"
    options = dict(zip(args[:i:2], args[1:i:2], strict=True))
    raw = input_args(src)
    assert options == {
        "-protocol_whitelist": "file",
        "-format_whitelist": raw[raw.index("-format_whitelist") + 1],
        "-hwaccel": "cuda",
        "-ss": "1.5",
    }
    assert harden_args(args).count("-protocol_whitelist") == 1  # nothing to add
    own = media_input(tmp_path / "f.jpg", format_whitelist=("jpeg_pipe",), f="jpeg_pipe")
    own_args = own.output(file_url(tmp_path / "o.png")).get_args()
    assert own_args[own_args.index("-format_whitelist") + 1] == "jpeg_pipe"


def test_scrub_keeps_file_names_and_drops_our_whitelist() -> None:
    assert scrub("Error opening input file file:/scratch/ab12/input.mp4.") == (
        "Error opening input file input.mp4."
    )
    assert scrub("Format concat detected, not on whitelist 'mov,matroska,webm'!") == (
        "Format concat detected, not on whitelist!"
    )


def test_harden_args_forces_flags_and_whitelists_every_input(tmp_path: Path) -> None:
    argv = harden_args(
        [
            "-i", file_url(tmp_path / "a.mp4"),  # no whitelist given: added
            *input_args(tmp_path / "b.wav"),
            "-f", "lavfi", "-i", "sine=duration=1",  # a generator needs none
            "-map", "0:v", "-y", "-n",
            file_url(tmp_path / "out.mp4"),
        ]
    )  # fmt: skip
    assert argv[0] == ffmpeg_exe()
    for flag in ("-nostdin", "-hide_banner", "-y", "-nostats"):
        assert argv.count(flag) == 1
    assert "-n" not in argv  # would fight -y
    assert argv[argv.index("-progress") + 1] == "pipe:1"
    inputs = [i for i, a in enumerate(argv) if a == "-i"]
    assert [argv[i + 1].split(":")[0] for i in inputs] == ["file", "file", "sine=duration=1"]
    # Every file input has -protocol_whitelist file among its own options.
    starts = [0, *[i + 2 for i in inputs]]
    for n, i in enumerate(inputs[:2]):
        group = argv[starts[n] : i]
        assert group[group.index("-protocol_whitelist") + 1] == "file"
    assert argv.count("-protocol_whitelist") == 2


@pytest.mark.parametrize("target", ["/etc/passwd", "http://example.com/x.mp4", "pipe:0"])
def test_harden_args_rejects_non_file_inputs(target: str) -> None:
    with pytest.raises(ValueError, match="file: URL"):
        harden_args(["-i", target, "-f", "null", "-"])


def test_harden_args_refuses_caller_progress() -> None:
    with pytest.raises(ValueError):
        harden_args(["-progress", "pipe:2", "-f", "lavfi", "-i", "sine", "-f", "null", "-"])


def test_harden_args_accepts_ffmpeg_python_compile_output(tmp_path: Path) -> None:
    import ffmpeg

    stream = ffmpeg.input(file_url(tmp_path / "a.mp4")).output(file_url(tmp_path / "b.mp4"))
    argv = harden_args(ffmpeg.compile(stream))
    assert argv[0] == ffmpeg_exe() and argv.count("-protocol_whitelist") == 1


def test_run_reports_progress_and_out_time(tmp_path: Path) -> None:
    seen: list[float] = []
    out = tmp_path / "tone.wav"
    result = run_ffmpeg(
        ["-re", "-f", "lavfi", "-i", "sine=duration=2", file_url(out)],
        deadline=_deadline(),
        progress=seen.append,
        duration_s=2.0,
    )
    assert result.returncode == 0 and out.stat().st_size > 0
    assert result.out_time_s == pytest.approx(2.0, abs=0.1)
    assert seen and seen[-1] == 1.0
    assert seen == sorted(seen) and all(0.0 <= f <= 1.0 for f in seen)
    assert len(seen) >= 2  # -re: ~1.5 s in real time, reports every 0.5 s


def test_timeout_kills_ffmpeg() -> None:
    started = time.monotonic()
    with pytest.raises(FfmpegTimeoutError, match=r"timed out after 0\.5 s") as err:
        run_ffmpeg(
            ["-re", "-f", "lavfi", "-i", "sine=duration=60", "-f", "null", "-"],
            deadline=_deadline(),
            timeout=0.5,
        )
    assert isinstance(err.value, TransientError) and isinstance(err.value, MediaToolError)
    assert time.monotonic() - started < 5


def test_deadline_is_enforced_and_named() -> None:
    with pytest.raises(FfmpegTimeoutError, match="job deadline"):
        run_ffmpeg(
            ["-re", "-f", "lavfi", "-i", "sine=duration=60", "-f", "null", "-"],
            deadline=time.monotonic() + 0.5,
        )


def test_past_deadline_does_not_start() -> None:
    with pytest.raises(FfmpegTimeoutError, match="deadline has already passed"):
        run_ffmpeg(["-f", "lavfi", "-i", "sine", "-f", "null", "-"], deadline=time.monotonic() - 1)


def test_chatty_stderr_is_drained_and_bounded() -> None:
    # ~2 MB of stderr: far over a pipe buffer, so an undrained pipe would hang.
    result = run_ffmpeg(
        [
            *("-f", "lavfi", "-i", "testsrc2=size=32x32:rate=1000:duration=5"),
            *("-vf", "showinfo", "-f", "null", "-"),
        ],
        deadline=_deadline(),
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stderr_truncated
    # The head is bounded by size (the probe parses all of it), the rest by lines.
    assert result.stderr_head_full and len(result.stderr_rest) == 200
    assert HEAD_CHARS - 4001 <= sum(len(line) + 1 for line in result.stderr_head) <= HEAD_CHARS
    assert len(result.stderr_tail) == 200 and "..." in result.stderr_lines


def test_tool_failure_is_media_tool_error_with_tail() -> None:
    args = ["-f", "lavfi", "-i", "sine=duration=0.1", "-c:a", "no_such_encoder"]
    with pytest.raises(MediaToolError) as err:
        run_ffmpeg([*args, "-f", "null", "-"], deadline=_deadline())
    assert not isinstance(err.value, InputError)
    msg = str(err.value)
    assert msg.startswith("ffmpeg failed (exit") and "no_such_encoder" in msg
    assert "\n" not in msg and len(msg) < 600


def test_bad_input_is_input_error(tmp_path: Path) -> None:
    src = make_text_as_media(tmp_path / "notes.mp4")
    with pytest.raises(InputError) as err:
        run_ffmpeg([*input_args(src), "-f", "null", "-"], deadline=_deadline())
    msg = str(err.value)
    assert "\n" not in msg and "(ffmpeg: " in msg
    assert str(tmp_path) not in msg  # scratch paths are not user information


def test_playlist_disguised_as_mp4_is_refused(tmp_path: Path) -> None:
    make_video(tmp_path / "other.mp4", seconds=0.2, size=(64, 64), audio=False)
    src = make_ffconcat_disguise(tmp_path / "clip.mp4", "other.mp4")
    # Without the demuxer whitelist ffmpeg would open other.mp4 through the playlist.
    with pytest.raises(InputError, match="not accepted"):
        run_ffmpeg([*input_args(src), "-f", "null", "-"], deadline=_deadline())


@pytest.mark.parametrize(
    ("lines", "kind", "needle"),
    [
        (
            [
                "[in#0 @ 0x55] moov atom not found",
                "[in#0 @ 0x56] Error opening input: Invalid data found when processing input",
                "Error opening input file file:/scratch/ab12/input.mp4.",
                "Error opening input files: Invalid data found when processing input",
            ],
            "input",
            "moov atom",
        ),
        (
            [
                "[h264_nvenc @ 0x1] Cannot load libcuda.so.1",
                "[vost#0:0/h264_nvenc @ 0x2] [enc:h264_nvenc @ 0x3] Error while opening encoder",
                "[out#0/null @ 0x4] Nothing was written into output file, because at least one"
                " of its streams received no packets.",
            ],
            "tool",
            "libcuda",
        ),
        (["Stream map '0:v:0' matches no streams."], "input", "matches no streams"),
        (["[out#0/mp4 @ 0x1] No space left on device"], "tool", "No space"),
        (["something nobody has seen before"], "tool", "nobody"),
    ],
)
def test_classify_failure(lines: list[str], kind: str, needle: str) -> None:
    failure = classify_failure(lines)
    assert failure.kind == kind
    assert needle in failure.detail
    assert "@ 0x" not in failure.detail  # context prefixes removed


@pytest.mark.parametrize(
    ("value", "text"),
    [(1_000_000, "1000000"), (1e6 + 0.5, "1000000.5"), (0.25, "0.25"), (1 / 3, "0.333333"),
     (2.0, "2"), (-0.0, "0"), (1e-9, "0"), (31_622_400.125, "31622400.125")],
)  # fmt: skip
def test_ffmpeg_number_is_plain_decimal(value: float, text: str) -> None:
    assert ffmpeg_number(value) == text


def test_ffmpeg_number_refuses_what_is_not_a_number() -> None:
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError):
            ffmpeg_number(bad)


def test_big_durations_reach_ffmpeg_as_numbers_it_reads(tmp_path: Path) -> None:
    out = tmp_path / "tone.wav"
    args = ["-f", "lavfi", "-i", "sine=duration=0.2", "-t", ffmpeg_number(1e6), file_url(out)]
    assert run_ffmpeg(args, deadline=_deadline()).returncode == 0
    # What ":g" wrote: a refusal of the job's own settings, once, without scratch paths.
    args[args.index("-t") + 1] = f"{1e6:g}"
    with pytest.raises(HandlerConfigError, match=r"Invalid duration.*1e\+06") as err:
        run_ffmpeg(args, deadline=_deadline())
    assert not isinstance(err.value, TransientError)
    assert str(tmp_path) not in str(err.value) and "\n" not in str(err.value)


def test_encoder_refusing_the_settings_is_a_config_error(tmp_path: Path) -> None:
    # libx264 cannot be lossless (CRF 0) in the "high" profile: no retry changes that.
    args = [
        *("-f", "lavfi", "-i", "testsrc2=size=64x64:duration=0.2"),
        *("-c:v", "libx264", "-crf", "0", "-profile:v", "high", "-pix_fmt", "yuv420p"),
        file_url(tmp_path / "o.mp4"),
    ]
    with pytest.raises(HandlerConfigError, match="high profile doesn't support lossless"):
        run_ffmpeg(args, deadline=_deadline())


@pytest.mark.parametrize(
    ("lines", "kind", "needle"),
    [
        (["Invalid duration for option t: 1e+06",
          "Error parsing options for output file file:/scratch/ab/vertical.mp4."],
         "config", "Invalid duration"),
        (["x264 [error]: high profile doesn't support lossless",
          "[vost#0:0/libx264 @ 0x1] [enc:libx264 @ 0x2] Error while opening encoder - maybe"
          " incorrect parameters such as bit_rate, rate, width or height."],
         "config", "lossless"),
        (["[vost#0:0/libx264 @ 0x1] [enc:libx264 @ 0x2] Error while opening encoder"],
         "config", "opening encoder"),
        (["[vost#0:0/h264_nvenc @ 0x1] [enc:h264_nvenc @ 0x2] Error while opening encoder"],
         "tool", "opening encoder"),
        (["[Parsed_drawtext_0 @ 0x1] Cannot find color 'notacolor'",
          "[fc#-1 @ 0x2] Error applying option 'fontcolor' to filter 'drawtext': Invalid"
          " argument"], "config", "fontcolor"),
        (["x264 [error]: malloc of size 7281920 failed"], "tool", "malloc"),
        (["Unrecognized option 'bogus'.", "Error splitting the argument list: Option not found"],
         "config", "bogus"),
    ],
)  # fmt: skip
def test_classify_refusals_of_the_jobs_settings(lines: list[str], kind: str, needle: str) -> None:
    failure = classify_failure(lines)
    assert (failure.kind, needle in failure.detail) == (kind, True), failure
    assert "/scratch/" not in failure.detail


def test_out_of_memory_under_a_limit_is_the_inputs_not_a_retry() -> None:
    lines = ["[vf#0:0 @ 0x1] Error while filtering: Cannot allocate memory"]
    assert isinstance(failure_error(1, lines), MediaToolError)  # the machine's: retried
    limited = failure_error(1, lines, memory_limit=3 << 30)
    assert isinstance(limited, InputError) and "3.0 GiB" in str(limited)


def test_tool_failure_tail_has_no_scratch_paths(tmp_path: Path) -> None:
    lines = [f"[out#0/mp4 @ 0x1] Could not write header to {tmp_path}/job/vertical.mp4: boom"]
    error = failure_error(1, lines)
    assert isinstance(error, MediaToolError)
    assert str(tmp_path) not in str(error) and "vertical.mp4" in str(error)
