"""The ``faces`` route's pipeline, one job per module.

``stream`` decodes sampled frames with ffmpeg into a pipe (bounded memory),
``models`` loads dlib's detector, landmark predictor and face descriptor from the
``face-recognition-models`` wheel, ``analyse`` finds, scores and embeds faces per
frame, ``quality`` is the documented best-frame score, ``cluster`` groups faces into
persons, and ``outputs`` writes the JPEGs and ``faces.json``.
"""
