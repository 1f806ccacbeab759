"""The media toolkit the handler plugins share.

Hardened ffmpeg runner and the one hardened input (ffmpeg_run), probe, input checks
and caps (checks: probe_input), encoding (encode), audio I/O, waveforms, and the
extensions the media routes accept. It never imports the job engine
(handlers.jobs) or the bucket (infra.storage).
"""
