"""The ``render`` route's edit decision list: models, crop expressions, overlays, graph."""
