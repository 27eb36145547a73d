"""Internal blinker signals that connect the workers to their handlers.

Receivers are held strongly and called one by one with errors caught, so one
failing handler never stops another or the reactor: blinker's own ``send``
stops at the first receiver that raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from blinker import Namespace, Signal

logger = logging.getLogger(__name__)

namespace = Namespace()

alert_raised = namespace.signal("alert-raised")
"""Sent with ``alert=Alert`` for every message meant for people."""

container_transition = namespace.signal("container-transition")
"""Sent with ``transition=Transition`` when a container's state changes."""

monitor_heartbeat = namespace.signal("monitor-heartbeat")
"""Sent with ``states=dict[str, ContainerState]`` after each reconciliation."""

alert_delivered = namespace.signal("alert-delivered")
"""Sent with ``channel=str`` and ``ok=bool`` after each delivery attempt ends."""

backup_finished = namespace.signal("backup-finished")
"""Sent with ``result=BackupResult`` after each database backup attempt."""


def connect(signal: Signal, receiver: Callable[..., Any]) -> None:
    """Subscribe ``receiver`` and keep it alive as long as the signal."""
    signal.connect(receiver, weak=False)


def publish(signal: Signal, sender: object, **payload: Any) -> int:
    """Call every receiver of ``signal``; return how many raised.

    Each receiver's error is logged and the rest still run.
    """
    failures = 0
    for receiver in list(signal.receivers_for(sender)):
        try:
            receiver(sender, **payload)
        except Exception:
            failures += 1
            logger.exception(
                "Signal receiver failed",
                extra={
                    "event": "handler_failed",
                    "signal": getattr(signal, "name", repr(signal)),
                },
            )
    return failures
