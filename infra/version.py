"""The installed dropgpu version, recorded in every manifest."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def dropgpu_version() -> str:
    try:
        return version("dropgpu")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+source"
