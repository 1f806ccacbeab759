"""The media toolkit the handler plugins share.

Hardened ffmpeg runner, probe, encoding, input checks, audio I/O, waveforms.
It never imports the job engine (handlers.jobs) or the bucket (infra.storage).
"""
