"""Adapters to the outside world, ground floor and roof.

The root modules are the foundation every layer may import (errors, text, log,
version, hashing, pricing). ``infra/storage/`` is the bucket (interface,
folder and S3 backends). ``infra/deploy/`` is the Modal app, a composition root
that imports everything; nothing imports it.
"""
