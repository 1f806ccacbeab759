"""Frames analysed on a few threads, results in frame order, memory bounded.

dlib releases the GIL inside its detector and network, so frames analysed on
several threads use several cores. The ResNet descriptor keeps scratch state inside
its network object, so no two threads share one: each task borrows a whole model
set from a queue and gives it back. At most ``2 x workers`` frames are in flight.
"""

from __future__ import annotations

import os
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from handlers.faces_pipeline.analyse import FrameFacts
from handlers.faces_pipeline.models import FaceModels

MAX_WORKERS = 4

Analyse = Callable[[np.ndarray, int, FaceModels], FrameFacts]


def worker_count() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cpus or 1))


def analyse_all(
    frames: Iterable[np.ndarray], model_sets: list[FaceModels], analyse: Analyse
) -> Iterator[tuple[np.ndarray, FrameFacts]]:
    """``(frame, analyse(frame, index, models))`` for each frame, in order."""
    if len(model_sets) == 1:
        for i, rgb in enumerate(frames):
            yield rgb, analyse(rgb, i, model_sets[0])
        return
    free: queue.Queue[FaceModels] = queue.Queue()
    for models in model_sets:
        free.put(models)

    def task(rgb: np.ndarray, i: int) -> FrameFacts:
        models = free.get()
        try:
            return analyse(rgb, i, models)
        finally:
            free.put(models)

    pending: deque[tuple[np.ndarray, Future[FrameFacts]]] = deque()
    with ThreadPoolExecutor(len(model_sets), thread_name_prefix="faces") as pool:
        try:
            for i, rgb in enumerate(frames):
                pending.append((rgb, pool.submit(task, rgb, i)))
                if len(pending) >= 2 * len(model_sets):
                    rgb0, done = pending.popleft()
                    yield rgb0, done.result()
            while pending:
                rgb0, done = pending.popleft()
                yield rgb0, done.result()
        finally:
            for _, future in pending:
                future.cancel()
