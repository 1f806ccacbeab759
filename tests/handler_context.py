"""One way for tests (and the stems bench) to build a HandlerContext as the job runner does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from handlers.protocol import HandlerContext, HandlerParams


def handler_context(
    job_dir: Path,
    input_path: Path,
    params: HandlerParams,
    *,
    device: str = "cpu",
    deadline_s: float = 120,
    progress: list[tuple[float, str]] | None = None,
    cache: dict[str, Any] | None = None,
) -> HandlerContext:
    """A context whose outputs go to ``job_dir/out`` and scratch to ``job_dir/work`` (made here).

    ``progress``, when given, collects every ``(fraction, phase)`` report; ``cache``
    is the per-worker cache (pass the same dict to make a second job warm).
    """
    out, work = job_dir / "out", job_dir / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    seen = [] if progress is None else progress
    return HandlerContext(
        input_path=input_path,
        output_dir=out,
        work_dir=work,
        params=params,
        device=device,
        deadline=time.monotonic() + deadline_s,
        progress=lambda fraction, phase: seen.append((fraction, phase)),
        cache={} if cache is None else cache,
    )
