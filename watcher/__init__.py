"""The control plane: routes config, the LIST snapshot, the tick, status and doctor.

``watcher/local/`` is the embedded executor (worker processes, the watch loop);
``watcher/cli/`` is the `dropgpu` command, a composition root.
"""
