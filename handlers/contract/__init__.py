"""What downstream programs rely on.

Keys, the manifest and its JSON Schema, the feed record format, webhook
signatures and the consumer toolkit. Nothing here imports the job engine.
"""
