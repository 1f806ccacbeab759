"""The one place dropgpu runs ffmpeg (DESIGN §8), and where its commands get their inputs.

Commands are built with ffmpeg-python: every graph starts at :func:`media_input`,
the one builder of a hardened input (a ``file:`` URL, ``-protocol_whitelist file``
and a demuxer whitelist, see below), and ends in ``.get_args()``. Raw argv is
kept only where ffmpeg-python cannot express the command:

- the probe's ``ffmpeg -i file:...`` has no output at all (:func:`input_args` is
  the raw form of the same hardened input);
- a stem's encode (:func:`handlers.media.audio_io.encode_stem`) meters loudness
  in a graph branch that ends in a sink filter (``ebur128,anullsink``), and
  ffmpeg-python only compiles what feeds an output;
- ``gpu.encoders``' capability probes sit below this toolkit and run the binary
  themselves on lavfi generators and their own sample file, never on user input.

Every command runs through :func:`run_ffmpeg`, which:

- runs the binary from :func:`gpu.ffmpeg_binary.ffmpeg_exe` as an argv list (never
  a shell) with ``-nostdin -hide_banner -y``;
- makes sure every real input is a ``file:`` URL opened under
  ``-protocol_whitelist file`` (a per-input option, so it goes before each ``-i``);
  :func:`input_options` also restricts the demuxer to plain audio/video containers,
  because ffmpeg picks the demuxer from the *content*: a text file named
  ``clip.mp4`` that starts ``ffconcat version 1.0`` would otherwise be opened as a
  playlist of other local files;
- reads ``-progress pipe:1`` for the current output time and reports it;
- drains stderr on a thread into bounded buffers so a chatty ffmpeg never blocks;
- kills the process at the timeout/deadline;
- enforces the route's caps *while decoding* (``handlers.media.decode_caps``):
  decoders refuse frames over ``max_input_pixels`` (``-max_pixels`` on the input,
  so a stream whose frames grow mid-stream is caught, not only what the probe saw),
  the process gets a data-memory limit sized from the caps, and an output that runs
  past ``max_duration_s`` (a container that lies about its length) is an input
  error, not a truncated success;
- turns a failure into :class:`InputError` when stderr says the *input* is bad,
  :class:`HandlerConfigError` when ffmpeg refused the job's own settings (an
  option value, an encoder that cannot be opened with them: retrying cannot
  help), else :class:`MediaToolError` (retried), with the readable part of stderr.

Every number that goes into an ffmpeg argument is written by :func:`ffmpeg_number`
(plain decimal: Python's ``:g`` writes 1000000 as ``1e+06``, which ffmpeg refuses).
"""

from __future__ import annotations

import math
import os
import re
import resource
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import ffmpeg
import structlog
from ffmpeg.nodes import FilterableStream

from gpu.ffmpeg_binary import ffmpeg_exe
from handlers.exceptions import HandlerConfigError, HandlerError, InputError, MediaToolError
from infra.text import one_line

if TYPE_CHECKING:  # decode_caps formats its numbers with ffmpeg_number, from here
    from handlers.media.decode_caps import DecodeCaps

log = structlog.get_logger(__name__)

# Demuxers that read one self-contained audio/video file. Excluded on purpose:
# concat/hls/dash/image2 (they open other files or glob), network/device inputs,
# subtitle and data formats. Names match ffmpeg's demuxer names
# ("mov" covers mp4/m4a/3gp, "matroska" covers webm, "asf" is wmv, "mpeg" is .mpg/.vob).
SAFE_DEMUXERS: tuple[str, ...] = (
    "mov", "matroska", "webm", "avi", "mpegts", "mpeg", "mpegvideo", "asf", "flv",
    "live_flv", "nut", "mxf", "dv", "ivf", "obu", "av1", "h264", "hevc", "m4v", "vc1",
    "yuv4mpegpipe", "gif", "wav", "w64", "aiff", "caf", "au", "mp3", "aac", "loas",
    "ac3", "eac3", "dts", "dtshd", "truehd", "mlp", "flac", "ogg", "wv", "ape", "tta",
    "tak", "mpc", "mpc8", "amr", "amrnb", "amrwb", "oma", "xwma", "dsf", "rm", "wtv",
)  # fmt: skip

# Stream-copy/decoding stats are off; progress comes from -progress instead.
_FORCED_FLAGS = ("-nostdin", "-hide_banner", "-y", "-nostats")
_DROP_FLAGS = frozenset({"-nostdin", "-hide_banner", "-y", "-n", "-nostats", "-stats"})
_TAIL_LINES = 200
# The start of stderr is kept by size (characters), not by lines: the probe parses all
# of it (the stream list of a file with a thousand streams is many thousand lines).
HEAD_CHARS = 1 << 20
_MAX_LINE = 4000
_POLL_S = 0.25
# A decoder refusing a frame over -max_pixels (libavutil's av_image_check_size2).
_MAX_PIXELS_RE = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count (\d+)")


def ffmpeg_number(value: float, places: int = 6) -> str:
    """``value`` as every ffmpeg option and filter reads it: plain decimal, no exponent,
    at most ``places`` decimals, trailing zeros dropped (``1e6`` -> ``"1000000"``)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number for ffmpeg: {value!r}")
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


@dataclass(slots=True)
class FfmpegResult:
    argv: list[str]
    returncode: int
    elapsed_s: float
    stderr_head: list[str]  # the first lines of stderr (bounded): the probe parses these
    stderr_rest: list[str]  # the last lines after the head (bounded)
    out_time_s: float | None = None  # last output timestamp reported by -progress
    stderr_truncated: bool = False  # lines were dropped between head and rest
    stderr_head_full: bool = False  # stderr went on past the head's size bound

    @property
    def stderr_tail(self) -> list[str]:
        """The last lines of stderr (up to 200), wherever they were kept."""
        return [*self.stderr_head, *self.stderr_rest][-_TAIL_LINES:]

    @property
    def stderr_lines(self) -> list[str]:
        """Every kept line in order; ``"..."`` marks where lines were dropped."""
        gap = ["..."] if self.stderr_truncated else []
        return [*self.stderr_head, *gap, *self.stderr_rest]


class FfmpegTimeoutError(MediaToolError):
    """ffmpeg ran past its timeout or the job deadline and was killed."""


def file_url(path: Path | str) -> str:
    """``file:<absolute path>``: no other protocol, and a name like ``a:b.mp4`` stays a file."""
    return f"file:{Path(path).absolute()}"


def input_options(format_whitelist: Sequence[str] | None = SAFE_DEMUXERS) -> dict[str, str]:
    """The options every local input gets: the file protocol only, plain demuxers only.

    ``format_whitelist`` names the demuxers allowed (None: no demuxer list, for an
    input whose ``-f`` is forced); our own intermediate files name the one they need.
    """
    options = {"protocol_whitelist": "file"}
    if format_whitelist:
        options["format_whitelist"] = ",".join(format_whitelist)
    return options


def option_kwargs(args: Sequence[str]) -> dict[str, str]:
    """``["-name", "value", ...]`` pairs as ffmpeg-python keyword options."""
    return {args[i].lstrip("-"): args[i + 1] for i in range(0, len(args), 2)}


def media_input(
    path: Path | str,
    *,
    format_whitelist: Sequence[str] | None = SAFE_DEMUXERS,
    hw_args: Sequence[str] = (),
    caps: DecodeCaps | None = None,
    **options: Any,
) -> FilterableStream:
    """An ffmpeg-python input for one local file, hardened as :func:`harden_args` expects.

    ``hw_args`` are hardware-decoding input options as "-name value" pairs; ``caps``
    (the user's input) makes its decoders refuse frames over ``caps.max_pixels``;
    other ``options`` (``ss``, ``t``, ``f``, ...) go before ``-i`` as keyword options.
    """
    kwargs: dict[str, Any] = {**input_options(format_whitelist), **option_kwargs(hw_args)}
    if caps is not None and (pixels := caps.decoder_max_pixels) is not None:
        kwargs["max_pixels"] = str(pixels)
    return ffmpeg.input(file_url(path), **kwargs, **options)


def input_args(
    path: Path | str,
    *,
    format_whitelist: Sequence[str] | None = SAFE_DEMUXERS,
    options: Sequence[str] = (),
) -> list[str]:
    """Raw argv form of :func:`media_input` for the probe; ``options`` go before ``-i``."""
    args = list(options)
    for name, value in input_options(format_whitelist).items():
        args += [f"-{name}", value]
    return [*args, "-i", file_url(path)]


def harden_args(args: Sequence[str]) -> list[str]:
    """The full argv: binary, forced flags, and a protocol whitelist before every ``-i``.

    Raises ``ValueError`` for an input that is neither a ``file:`` URL nor a lavfi
    graph: that is a programming error, not a bad input.
    """
    args = list(args)
    if args and not args[0].startswith("-"):
        first = os.path.basename(args[0])
        if first.startswith("ffmpeg") or args[0] == ffmpeg_exe():
            args = args[1:]  # ffmpeg.compile() output includes the command
    if "-progress" in args:
        raise ValueError("run_ffmpeg owns -progress; do not pass it")
    out: list[str] = [ffmpeg_exe(), *_FORCED_FLAGS, "-progress", "pipe:1"]
    group_start = len(out)  # options since the previous file belong to the next one
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _DROP_FLAGS:
            i += 1
            continue
        if arg == "-i":
            if i + 1 >= len(args):
                raise ValueError("-i without a value")
            target = args[i + 1]
            group = out[group_start:]
            lavfi = any(group[j] == "-f" and group[j + 1] == "lavfi" for j in range(len(group) - 1))
            if not lavfi:
                if not target.startswith("file:"):
                    raise ValueError(f"ffmpeg input must be a file: URL (use input_args): {target}")
                if "-protocol_whitelist" not in group:
                    out += ["-protocol_whitelist", "file"]
            out += ["-i", target]
            group_start = len(out)
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


class _StderrCollector:
    """Keeps the first bytes and the last lines of a stream; never blocks the writer.

    Every line is looked at as it passes, kept or not: a decoder's refusal of an
    oversized frame must be seen even in the middle of a flood.
    """

    def __init__(self, head_chars: int = HEAD_CHARS) -> None:
        self.head: list[str] = []
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.dropped = False
        self.head_full = False
        self.oversize: tuple[int, int, int] | None = None  # (width, height, max pixels)
        self._head_left = head_chars

    def add(self, line: str) -> None:
        line = line[:_MAX_LINE]
        if (
            self.oversize is None
            and "max pixel count" in line
            and (m := _MAX_PIXELS_RE.search(line))
        ):
            self.oversize = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if not self.head_full and len(line) + 1 <= self._head_left:
            self.head.append(line)
            self._head_left -= len(line) + 1
            return
        self.head_full = True
        if len(self.tail) == self.tail.maxlen:
            self.dropped = True
        self.tail.append(line)

    def drain(self, stream: IO[bytes]) -> None:
        pending = ""
        # read1 returns what is there now, so a line-less flood cannot stall us.
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            pending += chunk.decode("utf-8", "replace")
            *lines, pending = re.split(r"\r\n|\r|\n", pending)
            for line in lines:
                self.add(line)
            if len(pending) > _MAX_LINE:  # a line without end: keep its start
                self.add(pending)
                pending = ""
        if pending:
            self.add(pending)
        stream.close()


class _ProgressReader:
    def __init__(self) -> None:
        self.out_time_s: float | None = None
        self.ended = False

    def drain(self, stream: IO[bytes]) -> None:
        for raw in stream:
            key, _, value = raw.decode("utf-8", "replace").strip().partition("=")
            # out_time_ms is (historically) also microseconds; prefer out_time_us.
            if key in ("out_time_us", "out_time_ms"):
                try:
                    us = int(value)
                except ValueError:
                    continue  # "N/A" before the first packet
                if us >= 0:
                    self.out_time_s = us / 1_000_000
            elif key == "progress" and value == "end":
                self.ended = True
        stream.close()


def run_ffmpeg(
    args: Sequence[str],
    *,
    deadline: float | None,
    timeout: float | None = None,
    progress: Callable[[float], None] | None = None,
    duration_s: float | None = None,
    check: bool = True,
    caps: DecodeCaps | None = None,
    head_chars: int = HEAD_CHARS,
) -> FfmpegResult:
    """Run ffmpeg with ``args`` (no binary; see :func:`harden_args`) and wait for it.

    ``deadline`` is a ``time.monotonic()`` value; ``timeout`` seconds from now; the
    earlier wins. ``progress(fraction)`` is called on this thread when
    ``duration_s`` is known. With ``check`` a non-zero exit raises
    (:class:`InputError`, :class:`HandlerConfigError` or :class:`MediaToolError`); a
    timeout always raises :class:`FfmpegTimeoutError`. ``caps`` (the route's, for a
    run that decodes the user's input) limits the process's memory and makes an
    output past the duration cap an :class:`InputError`; a decoder's refusal of an
    oversized frame is one in any run. ``head_chars`` bounds the start of stderr kept.
    """
    argv = harden_args(args)
    started = time.monotonic()
    limit = _limit(started, deadline, timeout)
    if limit is not None and limit <= 0:
        raise FfmpegTimeoutError("ffmpeg not started: the job deadline has already passed")
    memory = caps.memory_limit() if caps is not None and not _uses_gpu(argv) else None
    log.debug("ffmpeg_start", argv=argv, limit_s=limit, memory_limit=memory)

    env = {**os.environ, "AV_LOG_FORCE_NOCOLOR": "1"}
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
    except OSError as exc:
        raise MediaToolError(f"could not start ffmpeg ({argv[0]}): {exc}") from exc
    if memory is not None:
        memory = _limit_memory(proc.pid, memory)

    errors = _StderrCollector(head_chars)
    prog = _ProgressReader()
    assert proc.stdout is not None and proc.stderr is not None
    threads = [
        threading.Thread(target=errors.drain, args=(proc.stderr,), daemon=True),
        threading.Thread(target=prog.drain, args=(proc.stdout,), daemon=True),
    ]
    for t in threads:
        t.start()

    timed_out = False
    reported: float | None = None
    try:
        while True:
            try:
                proc.wait(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if limit is not None and time.monotonic() - started > limit:
                timed_out = True
                break
            if errors.oversize is not None or (caps and caps.over_duration(prog.out_time_s)):
                break  # the input broke a cap: decoding more of it is wasted work
            if progress and duration_s and prog.out_time_s is not None:
                fraction = min(1.0, max(0.0, prog.out_time_s / duration_s))
                # out_time can step back between reports (several output streams):
                # a heartbeat should only move forward.
                if reported is None or fraction > reported:
                    reported = fraction
                    progress(fraction)
    finally:
        if proc.poll() is None:  # timeout, a broken cap, or the progress callback raised
            proc.kill()
        proc.wait()
        for t in threads:
            t.join(timeout=5)

    elapsed = time.monotonic() - started
    result = FfmpegResult(
        argv=argv,
        returncode=proc.returncode,
        elapsed_s=elapsed,
        stderr_head=errors.head,
        stderr_rest=list(errors.tail),
        out_time_s=prog.out_time_s,
        stderr_truncated=errors.dropped,
        stderr_head_full=errors.head_full,
    )
    # A broken cap first: ffmpeg goes on (exit 0) after a decoder refuses a frame.
    if errors.oversize is not None:
        width, height, pixels = errors.oversize
        pixels = caps.max_pixels if caps is not None and caps.max_pixels else pixels
        log.warning("ffmpeg_frame_over_cap", width=width, height=height, max_pixels=pixels)
        raise InputError(
            f"the video's frame size changed to {width}x{height} mid-stream, over the "
            f"limit of {pixels:,} pixels (max_input_pixels)"
        )
    if caps is not None and caps.over_duration(prog.out_time_s):
        assert prog.out_time_s is not None
        log.warning("ffmpeg_input_over_duration", out_time_s=prog.out_time_s)
        raise caps.too_long_error(prog.out_time_s)
    if timed_out:
        log.warning("ffmpeg_timeout", limit_s=round(limit or 0, 1), argv=argv)
        raise FfmpegTimeoutError(
            f"ffmpeg timed out after {limit:.1f} s and was killed"
            + (" (job deadline)" if _deadline_bound(started, deadline, timeout) else "")
        )
    log.debug("ffmpeg_done", returncode=proc.returncode, elapsed_s=round(elapsed, 3))
    if check and proc.returncode != 0:
        raise failure_error(proc.returncode, result.stderr_lines, memory_limit=memory)
    if progress and duration_s and proc.returncode == 0 and reported != 1.0:
        progress(1.0)
    return result


def _uses_gpu(argv: Sequence[str]) -> bool:
    """CUDA decoding or NVENC: the driver maps its own memory into the process, which no
    CPU-side sizing predicts, so such runs get no memory limit (the frame cap holds)."""
    return any(a in ("-hwaccel", "-init_hw_device") or a.endswith("_nvenc") for a in argv)


def _limit_memory(pid: int, limit: int) -> int | None:
    """Set ffmpeg's RLIMIT_DATA right after it started (no preexec_fn: the workers run
    handlers in threads, where forking into Python code can deadlock). Its first big
    allocations come after it has opened and read the input, well after this."""
    try:
        resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))
    except (OSError, AttributeError, ValueError) as exc:  # gone already; not Linux
        log.debug("ffmpeg_memory_limit_not_set", error=str(exc))
        return None
    return limit


def _limit(now: float, deadline: float | None, timeout: float | None) -> float | None:
    limits = [x for x in (timeout, None if deadline is None else deadline - now) if x is not None]
    return min(limits) if limits else None


def _deadline_bound(now: float, deadline: float | None, timeout: float | None) -> bool:
    return deadline is not None and (timeout is None or deadline - now <= timeout)


# --- classifying failures -------------------------------------------------------

# Memory ran out: the machine's (transient), or the limit a capped run has (input).
_MEMORY_PATTERNS: tuple[str, ...] = (
    "out of memory",
    "cannot allocate memory",
    "malloc of size",
    "pthread_create() failed",
)

# Not the input's fault: checked first, because a failed encoder also prints
# input-sounding consequences ("Nothing was written into output file").
_TOOL_PATTERNS: tuple[str, ...] = (
    "cannot load libcuda",
    "cannot load libnvidia",
    "no capable devices found",
    "openencodesessionex failed",
    "device creation failed",
    "unknown encoder",
    "no such filter",
    "no space left on device",
    "permission denied",
    "hardware device setup failed",
)

# ffmpeg refused the job's own settings (an option value, a profile the encoder cannot
# give with them): the same command fails the same way every time. Most specific first.
_CONFIG_PATTERNS: tuple[str, ...] = (
    "x264 [error]",
    "x265 [error]",
    "invalid duration",
    "unable to parse",
    "error applying option",
    "error setting option",
    "error setting profile",
    "error setting preset",
    "unrecognized option",
    "option not found",
    "error parsing options",
)
# An encoder that could not be opened: with a hardware encoder (a busy or absent
# device) that is the tool's fault; with a software one, the settings'.
_ENCODER_OPEN = "error while opening encoder"
_HW_ENCODER = re.compile(r"_(nvenc|qsv|vaapi|amf|v4l2m2m|videotoolbox|mf|vulkan)\b")

# (lower-case substring, readable summary). Most specific first.
_INPUT_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "format not on whitelist",
        "not a plain audio/video file: its format (e.g. a playlist) is not accepted",
    ),
    # ffmpeg guessed the container from the file name alone: the bytes are not media.
    (
        "misdetection possible",
        "the content is not a recognised media format (only the file name suggests one)",
    ),
    (
        "moov atom not found",
        "the MP4/MOV index (moov atom) is missing: the file is truncated or was never finished",
    ),
    ("ebml header parsing failed", "not a valid Matroska/WebM file"),
    ("not on whitelist", "the file refers to other files or URLs, which is not allowed"),
    ("protocol not found", "the file refers to other files or URLs, which is not allowed"),
    (
        "could not find codec parameters",
        "ffmpeg could not read the stream parameters (corrupt file or unsupported codec)",
    ),
    ("does not contain any stream", "the file has no audio or video streams"),
    ("matches no streams", "the file lacks the kind of stream this route needs"),
    ("decoder (codec", "the file uses a codec this ffmpeg cannot decode"),
    ("no decoder found", "the file uses a codec this ffmpeg cannot decode"),
    ("unsupported codec", "the file uses a codec this ffmpeg cannot decode"),
    ("error opening input: end of file", "the file ends before any media data (truncated)"),
    (
        "error opening input: invalid argument",
        "not a plain audio/video file (its container format is not accepted)",
    ),
    ("invalid data found when processing input", "the data is not a media format ffmpeg reads"),
    ("error while decoding", "the media data is corrupt (decoding failed)"),
    ("invalid nal unit size", "the media data is corrupt (decoding failed)"),
    ("partial file", "the file is truncated"),
    ("packet corrupt", "the media data is corrupt"),
)

# Lines that add nothing to a message (progress, banners, consequences).
_NOISE = re.compile(
    r"^(error opening input files?|error opening output files?|conversion failed|"
    r"exiting normally|at least one output file|press \[q\]|stream mapping|input #|output #)",
    re.IGNORECASE,
)
_CONTEXT_PREFIX = re.compile(r"^\s*\[[^\]]*\]\s*")


@dataclass(frozen=True, slots=True)
class FfmpegFailure:
    kind: Literal["input", "config", "tool"]
    summary: str  # readable, one line
    detail: str  # the stderr line that says it, cleaned
    tail: list[str] = field(default_factory=list)
    memory: bool = False  # memory ran out


def clean_line(line: str) -> str:
    """Drop ``[in#0 @ 0x...]`` context prefixes and whitespace."""
    prev = None
    line = line.strip()
    while prev != line:
        prev, line = line, _CONTEXT_PREFIX.sub("", line, count=1).strip()
    return line


def meaningful_lines(lines: Sequence[str]) -> list[str]:
    # Indented lines are ffmpeg's info dump (Metadata, Duration, Stream #...), not errors.
    cleaned = (clean_line(ln) for ln in lines if not ln.startswith("  "))
    return [ln for ln in cleaned if ln and ln != "..." and not _NOISE.match(ln)]


def classify_failure(lines: Sequence[str]) -> FfmpegFailure:
    """Decide whether a failed run's stderr blames the input, the job's settings or the tool."""
    cleaned = [clean_line(ln) for ln in lines]
    useful = meaningful_lines(lines)
    tail = useful[-10:]
    lowered = [ln.lower() for ln in cleaned]

    def first(pattern: str) -> str | None:
        return next((ln for ln, low in zip(cleaned, lowered, strict=True) if pattern in low), None)

    for pattern in _MEMORY_PATTERNS:
        if (ln := first(pattern)) is not None:
            return FfmpegFailure("tool", "ffmpeg ran out of memory", _detail(ln), tail, True)
    for pattern in _TOOL_PATTERNS:
        if (ln := first(pattern)) is not None:
            return FfmpegFailure("tool", "ffmpeg failed", _detail(ln), tail)
    refused = "ffmpeg refused the route's settings"
    for pattern in _CONFIG_PATTERNS:
        if (ln := first(pattern)) is not None:
            return FfmpegFailure("config", refused, _detail(ln), tail)
    for raw, low in zip(lines, lowered, strict=True):
        if _ENCODER_OPEN in low:
            kind: Literal["config", "tool"] = "tool" if _HW_ENCODER.search(raw) else "config"
            summary = refused if kind == "config" else "ffmpeg failed"
            return FfmpegFailure(kind, summary, _detail(clean_line(raw)), tail)
    for pattern, summary in _INPUT_PATTERNS:
        if (ln := first(pattern)) is not None:
            return FfmpegFailure("input", summary, _detail(ln), tail)
    detail = useful[-1] if useful else ""
    return FfmpegFailure("tool", "ffmpeg failed", _detail(detail), tail)


def failure_error(
    returncode: int, lines: Sequence[str], *, memory_limit: int | None = None
) -> HandlerError:
    """The exception for a failed run: InputError or HandlerConfigError (fail at once), or
    MediaToolError (retry). ``memory_limit``: the run had one, so running out of memory
    means the input needs more than its caps allow, which no retry changes."""
    failure = classify_failure(lines)
    if failure.kind == "input":
        return InputError(f"{failure.summary} (ffmpeg: {failure.detail})")
    if failure.kind == "config":
        return HandlerConfigError(
            f"{failure.summary} (ffmpeg: {failure.detail}); change the route's params"
        )
    if failure.memory and memory_limit is not None:
        return InputError(
            f"the input needs more memory than its caps allow: ffmpeg hit its limit of "
            f"{memory_limit / (1 << 30):.1f} GiB, sized from max_input_pixels "
            f"(ffmpeg: {failure.detail})"
        )
    tail = scrub(" | ".join(failure.tail)) or "(no output on stderr)"
    if len(tail) > 500:
        tail = "..." + tail[-497:]
    return MediaToolError(f"ffmpeg failed (exit {returncode}): {tail}")


def scrub(text: str) -> str:
    """``text`` without what tells the user nothing: scratch paths (the file name stays)
    and our own long demuxer whitelist."""
    text = re.sub(r"file:(/[^\s'\"]*/)([^/\s'\"]+)", r"\2", text)
    # A bare absolute path too (a filter naming its text file): only its last part.
    text = re.sub(r"(?<![\w.:/])(/[^\s'\"/]+)+/([^/\s'\"]+)", r"\2", text)
    return re.sub(r"(not on whitelist) '[^']*'", r"\1", text)


def _detail(line: str) -> str:
    return one_line(scrub(line), 200)
