"""The route's caps as one ffmpeg run enforces them while it decodes (issue 11).

The probe reads what a container *says*; :class:`DecodeCaps` holds the caps where
the bytes are decoded. :func:`handlers.media.ffmpeg_run.media_input` puts the
frame cap on the user's input (``-max_pixels``: decoders refuse any larger frame);
:func:`handlers.media.ffmpeg_run.run_ffmpeg` turns that refusal, and outputs that
run past the duration cap, into input errors, and limits the process's memory
to :meth:`DecodeCaps.memory_limit`. :func:`handlers.media.checks.decode_caps`
builds one from a route's params and the probed input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from handlers.exceptions import InputError
from handlers.media.ffmpeg_run import ffmpeg_number

# Outputs of a capped run go this far past the cap, so an input that goes on is seen
# going on; more than half of it past the cap is an input over the cap.
DURATION_GRACE_S = 1.0
# The data-memory limit of a capped ffmpeg (RLIMIT_DATA: heap, thread stacks and other
# private writable memory; unlike RLIMIT_AS it does not count address space that is
# only reserved, which glibc's per-thread arenas reserve by the gigabyte). Measured on
# a 1080p -> 1080x1920 libx264 encode: ~0.5 GiB on 2 threads, ~2 GiB on 16.
_MEMORY_BASE = 1 << 30
_MEMORY_PER_CPU = 192 << 20
# Frames at the cap that may be alive at once (decoder threads, references, filter
# queues, encoder lookahead), at 8 bytes a pixel (16-bit 4:4:4 with alpha).
_FRAMES_IN_FLIGHT = 32
_BYTES_PER_PIXEL = 8
_STRIDE_ALIGN = 64  # libavcodec checks max_pixels on the stride-aligned width


def _cpus() -> int:
    # What ffmpeg's automatic threading counts (av_cpu_count: the affinity mask).
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class DecodeCaps:
    """A route's caps as one ffmpeg run enforces them while it decodes the user's input.

    ``max_pixels`` goes on the input (:func:`media_input`): decoders refuse any larger
    frame, the first or the thousandth, and :func:`run_ffmpeg` turns the refusal into
    an input error; it also sizes the process's memory limit.

    ``max_duration_s`` is in input seconds; ``start_s`` (a trim's start, skipped by
    input seeking) and ``speed`` (input seconds per output second) map it onto the
    output timeline. That is what ffmpeg reports: ``-progress`` gives the end of the
    latest packet written to any output. Every output gets ``-t`` :meth:`output_t`,
    a grace second past the cap, and a run whose outputs reach past half of it read
    more input than the cap allows. ``slack_s``: how far past the input's end a route's
    output may legitimately reach (frames at a rate of ``fps`` last ``1/fps`` each).
    ``declared_s`` (the container's own duration) only goes into the message.
    """

    max_pixels: int | None = None
    max_duration_s: float | None = None
    start_s: float = 0.0
    speed: float = 1.0
    declared_s: float | None = None
    slack_s: float = 0.0
    declared_size: tuple[int, int] | None = None  # the probed (coded) frame size

    @property
    def decoder_max_pixels(self) -> int | None:
        """The ``-max_pixels`` decoders get: the cap, or the probed frame's size as the
        decoder counts it (width rounded up to its 64-pixel stride) where that is more,
        so a frame the probe accepted is never refused; growing past it is."""
        if self.max_pixels is None:
            return None
        if self.declared_size is None:
            return self.max_pixels
        width, height = self.declared_size
        return max(self.max_pixels, -(-width // _STRIDE_ALIGN) * _STRIDE_ALIGN * height)

    @property
    def max_output_s(self) -> float | None:
        """Output seconds that hold all of the input a route accepts."""
        if self.max_duration_s is None:
            return None
        return max(0.0, self.max_duration_s - self.start_s) / self.speed

    def output_t(self) -> str | None:
        """The ``-t`` for every output: a grace second past :attr:`max_output_s`."""
        limit = self.max_output_s
        if limit is None:
            return None
        return ffmpeg_number(limit + self.slack_s + DURATION_GRACE_S, 3)

    def input_t(self) -> str | None:
        """The input's ``-t`` for a run that reads from the start at speed 1: the cap
        plus the slack and the grace second."""
        cap = self.max_duration_s
        return None if cap is None else ffmpeg_number(cap + self.slack_s + DURATION_GRACE_S, 3)

    def over_duration(self, out_time_s: float | None) -> bool:
        """Whether outputs that reached ``out_time_s`` read more input than the cap."""
        limit = self.max_output_s
        if limit is None or out_time_s is None:
            return False
        return out_time_s > limit + self.slack_s + DURATION_GRACE_S / 2

    def memory_limit(self) -> int:
        """Bytes of data memory ffmpeg may use (``RLIMIT_DATA``) under these caps."""
        frames = _FRAMES_IN_FLIGHT * _BYTES_PER_PIXEL * (self.max_pixels or 0)
        return _MEMORY_BASE + _cpus() * _MEMORY_PER_CPU + frames

    def too_long_error(self, out_time_s: float) -> InputError:
        assert self.max_duration_s is not None
        went = self.start_s + (out_time_s - self.slack_s) * self.speed
        said = (
            f" although its container says {self.declared_s:.1f} s"
            if self.declared_s is not None
            else ""
        )
        return InputError(
            f"the input is longer than max_duration_s ({_seconds(self.max_duration_s)}): "
            f"decoding went on past {_seconds(went)}{said}"
        )


def _seconds(value: float) -> str:
    return f"{value:.1f} s"
