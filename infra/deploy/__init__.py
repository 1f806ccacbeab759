"""Distributed mode: the Modal app, its settings and `dropgpu deploy`.

A composition root: it may import every layer.
"""
