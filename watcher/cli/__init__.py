"""The `dropgpu` command line: a composition root that may import everything."""

from watcher.cli.main import main

__all__ = ["main"]
