"""Process lifecycle shared by the long-running workers."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

logger = logging.getLogger(__name__)


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
