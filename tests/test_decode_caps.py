"""The route caps hold while ffmpeg decodes, not only where the probe looked (issue 11).

- frames that grow mid-stream past ``max_input_pixels`` (an MJPEG-in-MKV whose first
  frames are 320x240) fail every video route with an input error, never a success;
- a container that says 1 s and holds 20 s, on a 5 s cap, fails with "longer than
  max_duration_s" instead of a silently truncated output;
- an honest input at the cap still succeeds (speed and trim included);
- the ffmpeg child gets a data-memory limit sized from the caps, and running out of
  it is an input error, not a retry.

Real ffmpeg on tiny generated media; the handlers run as the job runner runs them.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from handlers.exceptions import InputError
from handlers.frames import FramesHandler, FramesParams
from handlers.highlights import HighlightsHandler, HighlightsParams
from handlers.media.audio_io import decode_to_f32
from handlers.media.decode_caps import DecodeCaps
from handlers.media.ffmpeg_run import media_input, run_ffmpeg
from handlers.protocol import HandlerParams
from handlers.proxy import ProxyHandler, ProxyParams
from handlers.vertical import VerticalHandler, VerticalParams
from tests.corpus import make_growing_mjpeg_mkv, make_lying_duration_mkv, make_small_video
from tests.handler_context import handler_context

CAP_PIXELS = 1_000_000  # the later frames are 2000x2000 = 4,000,000
CAP_S = 5.0

GROWN = r"frame size changed to 2000x2000 mid-stream, over the limit of 1,000,000 pixels"
TOO_LONG = r"longer than max_duration_s \(5\.0 s\).*container says 1\.0 s"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("decode-caps")
    make_growing_mjpeg_mkv(d / "growing.mkv", audio=True)
    make_lying_duration_mkv(d / "lying.mkv", real_s=20, claimed_s=1)
    make_small_video(d / "five-seconds.mp4", seconds=CAP_S, size=32, fps=5)
    return d


ROUTES = {
    "vertical": (VerticalHandler, lambda **kw: VerticalParams(width=90, height=160, **kw)),
    "proxy": (ProxyHandler, lambda **kw: ProxyParams(short_side=144, poster_candidates=3, **kw)),
    "frames": (FramesHandler, lambda **kw: FramesParams(sheet_labels=False, **kw)),
    "highlights": (HighlightsHandler, lambda **kw: HighlightsParams(short_side=144, **kw)),
}


def run_route(route: str, src: Path, job: Path, **params: object) -> object:
    handler, make = ROUTES[route]
    built: HandlerParams = make(**params)
    return handler().run(handler_context(job, src, built))


@pytest.mark.parametrize("route", list(ROUTES))
def test_frames_growing_mid_stream_fail_every_video_route(
    route: str, media: Path, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=GROWN) as err:
        run_route(route, media / "growing.mkv", tmp_path, max_input_pixels=CAP_PIXELS)
    assert "max_input_pixels" in str(err.value)
    assert not list((tmp_path / "out").iterdir())  # nothing half-written is left


@pytest.mark.parametrize("route", list(ROUTES))
def test_container_that_lies_about_its_length_fails_every_route(
    route: str, media: Path, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=TOO_LONG):
        run_route(route, media / "lying.mkv", tmp_path, max_duration_s=CAP_S)
    assert not list((tmp_path / "out").iterdir())


def test_lying_container_fails_the_audio_decode_of_stems(media: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=TOO_LONG):
        decode_to_f32(
            media / "lying.mkv", tmp_path / "mix.f32", stream_index=1, sample_rate=44100,
            channels=2, source_channels=1, max_duration_s=CAP_S, deadline=None, duration_s=1.0,
        )  # fmt: skip


def test_vertical_speed_and_trim_map_the_cap_onto_the_output(media: Path, tmp_path: Path) -> None:
    # At speed 2 the output is half as long: the cap lands at 2.5 s of output.
    with pytest.raises(InputError, match=TOO_LONG):
        run_route("vertical", media / "lying.mkv", tmp_path, max_duration_s=CAP_S, speed=2)


@pytest.mark.parametrize(
    ("route", "params"),
    [
        ("vertical", {}),
        ("vertical", {"speed": 2.0}),
        ("vertical", {"speed": 0.5, "trim_start_s": 1.0}),
        ("proxy", {}),
        ("frames", {"fps": 0.5}),
    ],
)
def test_an_honest_input_at_the_cap_still_succeeds(
    route: str, params: dict[str, object], media: Path, tmp_path: Path
) -> None:
    run_route(route, media / "five-seconds.mp4", tmp_path, max_duration_s=CAP_S, **params)
    assert list((tmp_path / "out").iterdir())


def test_a_frame_exactly_at_the_cap_still_succeeds(tmp_path: Path) -> None:
    # libavcodec counts a frame's width rounded up to its 64-pixel stride: 100x100 is
    # 128x100 to it. The probe accepted the frame, so the decoder must too.
    src = make_small_video(tmp_path / "square.mp4", seconds=1, size=100, fps=5)
    run_route("vertical", src, tmp_path / "job", max_input_pixels=100 * 100)
    caps = DecodeCaps(max_pixels=100 * 100, declared_size=(100, 100))
    assert caps.decoder_max_pixels == 128 * 100
    assert DecodeCaps(max_pixels=10**6, declared_size=(640, 360)).decoder_max_pixels == 10**6


def _ffmpeg_child_limits(timeout: float = 10) -> str:
    """/proc/<pid>/limits of this process's ffmpeg child, once it runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == os.getpid() and "ffmpeg" in stat.split(")")[0]:
                    limits = (entry / "limits").read_text()
                    if "Max data size" in limits and "unlimited" not in _data_line(limits):
                        return limits
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.05)
    raise AssertionError("no ffmpeg child with a data limit seen")


def _data_line(limits: str) -> str:
    return next(line for line in limits.splitlines() if line.startswith("Max data size"))


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs Linux /proc")
def test_capped_ffmpeg_runs_under_a_data_memory_limit_sized_from_the_caps() -> None:
    caps = DecodeCaps(max_pixels=CAP_PIXELS, max_duration_s=60)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_ffmpeg(
                ["-re", "-f", "lavfi", "-i", "sine=duration=2", "-f", "null", "-"],
                deadline=time.monotonic() + 60,
                caps=caps,
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    try:
        line = _data_line(_ffmpeg_child_limits())
    finally:
        thread.join()
    assert not errors, errors
    soft, hard = (int(x) for x in line.split()[3:5])
    assert soft == hard == caps.memory_limit()
    # Sized from the caps: a bigger frame cap allows more.
    assert DecodeCaps(max_pixels=4 * CAP_PIXELS).memory_limit() > caps.memory_limit()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_running_out_of_the_memory_limit_is_an_input_error(tmp_path: Path) -> None:
    # One CPU (the limit counts CPUs, as ffmpeg's threading does): ~1.2 GiB allowed, and
    # one 16000x16000 frame at 8 bytes a pixel is 2 GB. Nothing is touched: the
    # allocation is refused.
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        caps = DecodeCaps(max_pixels=64 * 64)
        assert caps.memory_limit() < 16000 * 16000 * 8
        graph = "color=size=16000x16000:duration=0.04"
        with pytest.raises(InputError, match="needs more memory than its caps allow") as err:
            run_ffmpeg(
                ["-f", "lavfi", "-i", graph, "-vf", "format=rgba64le", "-f", "null", "-"],
                deadline=time.monotonic() + 60,
                caps=caps,
            )
    finally:
        os.sched_setaffinity(0, before)
    assert "GiB" in str(err.value) and "max_input_pixels" in str(err.value)


def test_media_input_puts_the_frame_cap_on_the_input(tmp_path: Path) -> None:
    src = tmp_path / "in.mkv"
    args = media_input(src, caps=DecodeCaps(max_pixels=CAP_PIXELS)).output("-", f="null")
    argv = args.get_args()
    i = argv.index("-i")
    assert argv[argv.index("-max_pixels") + 1] == str(CAP_PIXELS) and argv.index("-max_pixels") < i
    assert "-max_pixels" not in media_input(src).output("-", f="null").get_args()
