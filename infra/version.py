"""The installed dropgpu version, recorded in every manifest."""

from __future__ import annotations

import os
from functools import cache
from importlib.metadata import PackageNotFoundError, version

VERSION_ENV = "DROPGPU_VERSION"


@cache
def dropgpu_version() -> str:
    # Containers run the source without installing it: the deploy records its version.
    if os.environ.get(VERSION_ENV):
        return os.environ[VERSION_ENV]
    try:
        return version("dropgpu")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+source"
