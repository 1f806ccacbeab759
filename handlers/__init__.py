"""The data plane: handlers, the toolkit they share, the job engine and the contract.

- ``protocol``, ``exceptions``: the handler API. ``registry``: built-in handler names.
- ``vertical``, ``proxy``, ``frames``, ``highlights``, ``stems``: one route handler per
  module. A handler is a pure file-to-file function that describes itself
  (docs/handlers.md); it may import ``handlers.protocol``, ``handlers.exceptions``,
  ``handlers.media`` and ``gpu``, never the bucket, the engine or the watcher.
- ``media/``: the ffmpeg toolkit the handlers share.
- ``jobs/``: the engine that runs one claimed job (claims, lease, commit, manifests).
- ``contract/``: what downstream programs rely on (keys, manifest schema, feed, consumer).
"""
