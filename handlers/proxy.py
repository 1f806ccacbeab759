"""The ``proxy`` route (ingest): an edit/review proxy, a poster and the waveform.

One ffmpeg run decodes the input once and writes everything:

- ``proxy.mp4``: H.264/AAC with the short side scaled to at most 720 pixels,
  aspect ratio kept (square pixels, rotation applied), even sizes, never upscaled;
- ``poster.jpg``: the most representative of ~30 frames sampled across the whole
  video (ffmpeg's ``thumbnail`` filter: the frame closest to the average colour
  histogram), so a fade from black or a slate does not become the poster;
- mono float PCM in the scratch dir, reduced to ``waveform.json`` (peaks) and
  ``waveform.png`` by :mod:`handlers.media.waveform`.

Audio-only inputs get the waveform outputs only; a video without sound gets no
waveform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import ffmpeg
from pydantic import Field

from gpu.encoders import VideoEncoderChoice
from handlers.exceptions import MediaToolError
from handlers.media.checks import (
    EvenPixels,
    MediaLimits,
    check_complete,
    coerce_params,
    decode_caps,
    display_size,
    fit_even,
    probe_input,
)
from handlers.media.decode_caps import DecodeCaps
from handlers.media.encode import (
    AacBitrate,
    VideoQuality,
    encode_video,
    prepare_video,
    video_summary,
)
from handlers.media.extensions import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS
from handlers.media.ffmpeg_run import (
    ffmpeg_number,
    file_url,
    media_input,
    option_kwargs,
    run_ffmpeg,
)
from handlers.media.probe import MediaInfo, VideoStream, probe
from handlers.media.waveform import PcmFormat, WaveformParams, pcm_output, write_waveform
from handlers.protocol import HandlerContext, HandlerParams, HandlerResult, OutputFile

PROXY_NAME = "proxy.mp4"
POSTER_NAME = "poster.jpg"
_PCM_NAME = "audio.f32"


class ProxyParams(MediaLimits):
    short_side: EvenPixels = Field(
        720, ge=144, le=2160, description="the proxy's short side at most (720 = 720p)"
    )
    max_fps: int = Field(60, ge=1, le=240, description="faster sources are reduced to this")
    quality: VideoQuality = None
    audio_bitrate: AacBitrate = "128k"
    poster_candidates: int = Field(
        30, ge=1, le=200, description="frames sampled across the video to pick the poster from"
    )
    waveform: WaveformParams = Field(default_factory=WaveformParams)


class ProxyHandler:
    name: ClassVar[str] = "proxy"
    version: ClassVar[str] = "1.0.0"
    # Self-description (handlers.protocol.HandlerInfo): Modal image, GPU, default routes.
    modal_image: ClassVar[str] = "ffmpeg"
    gpu_kind: ClassVar[str] = "video"
    default_routes: ClassVar[dict[str, dict[str, Any]]] = {"proxy": {}}
    Params: ClassVar[type[HandlerParams]] = ProxyParams
    extensions: ClassVar[frozenset[str]] = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS

    def run(self, ctx: HandlerContext) -> HandlerResult:
        params = coerce_params(ctx.params, ProxyParams)
        log = ctx.log.bind(handler=self.name)
        probed = probe_input(ctx, self.name, params, needs="video or audio")
        info, video = probed.info, probed.video
        duration = min(info.duration_s, params.max_duration_s) if info.duration_s else None
        caps = decode_caps(params, info)
        pcm = ctx.work_dir / _PCM_NAME if info.has_audio else None
        pcm_fmt = PcmFormat.for_points_per_second(params.waveform.points_per_second)
        outputs: list[OutputFile] = []
        summary: dict[str, Any] = {}
        runtime: dict[str, Any] = {}

        if video is not None:
            proxy_path = ctx.output_dir / PROXY_NAME
            poster_path = ctx.output_dir / POSTER_NAME
            size = fit_even(*display_size(video), max_short=params.short_side)

            def build(choice: VideoEncoderChoice) -> list[str]:
                return build_args(
                    ctx.input_path, ctx.output_dir, info, video, params, choice, size, pcm,
                    pcm_fmt.sample_rate, duration, caps,
                )  # fmt: skip

            runtime = encode_video(
                device=ctx.device,
                build=build,
                outputs=[proxy_path, poster_path],
                deadline=ctx.deadline,
                duration_s=duration,
                progress=lambda f: ctx.progress(0.95 * f, "encode"),
                caps=caps,
            )
            out = probe(proxy_path, deadline=ctx.deadline)
            try:
                check_complete(duration, out.duration_s)
                if not poster_path.is_file() or poster_path.stat().st_size == 0:
                    raise MediaToolError("ffmpeg wrote no poster frame")
            except Exception:
                proxy_path.unlink(missing_ok=True)
                poster_path.unlink(missing_ok=True)
                raise
            outputs += [
                OutputFile(PROXY_NAME, proxy_path, "proxy", "video/mp4"),
                OutputFile(POSTER_NAME, poster_path, "poster", "image/jpeg"),
            ]
            summary["proxy"] = video_summary(out)
            summary["poster"] = {"width": size[0], "height": size[1]}
        else:
            assert pcm is not None and probed.audio is not None  # probe: audio or video
            src = media_input(ctx.input_path, caps=caps)
            audio = src[str(probed.audio.index)]
            args = pcm_output(audio, pcm, pcm_fmt.sample_rate, caps=caps)
            run_ffmpeg(
                args.get_args(),
                deadline=ctx.deadline,
                duration_s=duration,
                progress=lambda f: ctx.progress(0.95 * f, "decode"),
                caps=caps,
            )

        if pcm is not None:
            ctx.progress(0.96, "waveform")
            files, wave = write_waveform(
                pcm, ctx.output_dir, ctx.work_dir, params.waveform, deadline=ctx.deadline
            )
            if video is None:
                try:
                    check_complete(duration, wave["decoded_audio_s"])
                except Exception:
                    for f in files:
                        f.path.unlink(missing_ok=True)
                    raise
            pcm.unlink(missing_ok=True)
            outputs += files
            summary["waveform"] = wave
        summary["outputs"] = [o.role for o in outputs]
        log.info("proxy_done", outputs=[o.name for o in outputs], video=video is not None)
        return HandlerResult(
            outputs=outputs, media=info.as_manifest_dict(), runtime=runtime, summary=summary
        )


def build_args(
    input_path: Path,
    output_dir: Path,
    info: MediaInfo,
    video: VideoStream,
    params: ProxyParams,
    choice: VideoEncoderChoice,
    size: tuple[int, int],
    pcm: Path | None,
    pcm_rate: int,
    duration: float | None,
    caps: DecodeCaps | None = None,
) -> list[str]:
    """ffmpeg arguments (no binary) for proxy + poster (+ PCM for the waveform) in one run."""
    caps = caps or DecodeCaps(params.max_input_pixels, params.max_duration_s)
    src = media_input(input_path, hw_args=choice.input_args(), caps=caps)
    # Select streams by index: "v:0" could be a cover picture, not the video.
    v = prepare_video(src[str(video.index)], video)
    if video.fps and video.fps > params.max_fps:
        v = v.filter("fps", params.max_fps)
    v = v.filter("scale", size[0], size[1]).filter("setsar", 1).filter("format", "yuv420p")
    branches = v.split()
    limit = {"t": caps.output_t()}  # past the cap: an input that goes on is an error

    streams = [branches[0]]
    out_opts: dict[str, Any] = option_kwargs(choice.codec_args(params.quality))
    if info.audio is not None:
        streams.append(src[str(info.audio.index)])
        out_opts.update({"c:a": "aac", "b:a": params.audio_bitrate, "ar": 48000, "ac": 2})
    else:
        out_opts["an"] = None
    out_opts.update({"movflags": "+faststart", "sn": None, **limit})
    proxy = ffmpeg.output(*streams, file_url(output_dir / PROXY_NAME), **out_opts)

    # Sample ~poster_candidates frames evenly over the whole video, keep the most typical.
    n = params.poster_candidates
    rate = n / duration if duration else 1.0
    if video.fps:
        rate = min(rate, video.fps)
    poster_stream = branches[1].filter("fps", ffmpeg_number(rate)).filter("thumbnail", n=n)
    # One still: its time means nothing, and a late pick lasting 1/rate would reach past
    # the input's end, which the duration cap reads as an input longer than it says.
    poster_stream = poster_stream.filter("setpts", "0")
    poster = ffmpeg.output(
        poster_stream,
        file_url(output_dir / POSTER_NAME),
        **{"frames:v": 1, "update": 1, "q:v": 3, "c:v": "mjpeg", "pix_fmt": "yuvj420p"},
    )
    outs = [proxy, poster]
    if pcm is not None and info.audio is not None:
        audio = src[str(info.audio.index)]
        outs.append(pcm_output(audio, pcm, pcm_rate, caps=caps))
    return ffmpeg.merge_outputs(*outs).get_args()
