"""Errors of the control plane (config, CLI, tick)."""

from __future__ import annotations

from infra.errors import DropgpuError


class WatcherError(DropgpuError):
    """Base class for control-plane errors."""


class ConfigError(WatcherError):
    """dropgpu.toml (or a CLI flag) is invalid; the message names the field."""


class UnsafeStoreError(WatcherError):
    """The store does not honour create-if-absent; running on it would double-process."""
