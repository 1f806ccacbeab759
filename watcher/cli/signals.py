"""Stopping a long-running command on SIGINT and SIGTERM, however it was started.

A background job of a non-interactive shell (``dropgpu feed --follow &`` in a
script) starts with SIGINT ignored; Python then installs no Ctrl-C handler and
``kill -INT`` does nothing. So the CLI never relies on inherited dispositions:
``restore_ctrl_c`` gives every command its normal Ctrl-C back at start-up, and
``until_signalled`` installs its own handlers on the running loop. (``watch``
installs its own once/twice handlers the same way, in main.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def restore_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt again when the parent left SIGINT ignored."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)


async def until_signalled(work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work`` until it returns or SIGINT/SIGTERM arrives; None when a signal ended it.

    The handlers are the loop's own (``add_signal_handler``), so they work whatever
    this process inherited; ``work`` is cancelled, so its ``async with`` blocks close.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()
