"""Process lifecycle shared by the long-running workers."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

logger = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended.

    The cancellation is repeated: in Python 3.11, ``asyncio.wait_for`` drops a
    cancellation that arrives as its inner future completes, and the task
    would then carry on and be awaited forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "Background task failed",
            extra={
                "event": "task_failed",
                "task": task.get_name(),
                "error": str(task.exception()),
            },
        )


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM or SIGINT; call inside the running loop."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _handler(stop, signum))


def _handler(stop: Callable[[], None], signum: int) -> Callable[[], None]:
    def handle() -> None:
        logger.info(
            "Stop requested",
            extra={"event": "stop_requested", "signal": signal.Signals(signum).name},
        )
        stop()

    return handle
