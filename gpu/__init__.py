"""Devices and models: device choice, the ffmpeg binary and its hardware encoders,
the model store and demucs separation. Imports nothing of dropgpu above the foundation."""
