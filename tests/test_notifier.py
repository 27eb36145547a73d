"""Fan-out of alerts to channels: queues, batching and isolation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from handlers.notifier import Channel, Notifier
from reactor import signals
from reactor.alerts import Alert, AlertType
from reactor.errors import DeliveryError


def alert(subject: str) -> Alert:
    return Alert(
        type=AlertType.ERROR,
        title=f"{subject} is down",
        text="",
        worker="health-monitor",
        host="node",
        subject=subject,
    )


class Recorder(Channel):
    def __init__(
        self, name: str, min_interval: float = 0.0, fail: bool = False
    ) -> None:
        self.name = name
        self.min_interval = min_interval
        self.fail = fail
        self.batches: list[tuple[float, list[str]]] = []

    async def deliver(self, alerts: Sequence[Alert]) -> None:
        self.batches.append((time.monotonic(), [a.subject for a in alerts]))
        if self.fail:
            raise DeliveryError("channel is down")


async def _raise_and_drain(
    channels: list[Channel], count: int, grace: float, first_alone: bool = False
) -> Notifier:
    notifier = Notifier(channels)
    notifier.start()
    for i in range(count):
        signals.publish(signals.alert_raised, None, alert=alert(f"c{i}"))
        if first_alone and i == 0:
            # Let the first alert leave before the burst arrives.
            await asyncio.sleep(0.05)
    await notifier.stop(grace)
    return notifier


def test_rate_limited_channel_batches_pending_alerts() -> None:
    slow = Recorder("slow", min_interval=0.5)
    notifier = asyncio.run(_raise_and_drain([slow], 30, grace=5, first_alone=True))
    delivered = [subject for _, batch in slow.batches for subject in batch]
    assert delivered == [f"c{i}" for i in range(30)]
    assert [len(batch) for _, batch in slow.batches] == [1, 29]
    assert slow.batches[1][0] - slow.batches[0][0] >= 0.5
    assert notifier.stats.sent["slow"] == 30


def test_failing_channel_does_not_block_another() -> None:
    broken = Recorder("broken", fail=True)
    working = Recorder("working")
    notifier = asyncio.run(_raise_and_drain([broken, working], 3, grace=2))
    assert [s for _, batch in working.batches for s in batch] == ["c0", "c1", "c2"]
    assert notifier.stats.sent["working"] == 3
    assert notifier.stats.failed["broken"] == 3
    assert notifier.stats.sent["broken"] == 0
