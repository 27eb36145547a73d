"""Deliver alerts to each channel off the event path, one queue per channel.

Each channel has its own queue and task, so a slow or failing channel never
delays another or the reactor. Alerts that pile up while a channel waits (for
its rate limit, or a retry) are sent together as one summary message instead
of being dropped.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from handlers.outbox import Outbox
from reactor import signals
from reactor.alerts import Alert
from reactor.errors import DeliveryError
from reactor.lifecycle import cancel_and_wait

logger = logging.getLogger(__name__)


class Channel(abc.ABC):
    """One way of reaching people: Slack, email."""

    name: str
    min_interval: float = 0.0
    """Seconds to leave between two deliveries: the channel's rate limit."""
    max_batch: int = 50
    """Most alerts put into one message."""

    @abc.abstractmethod
    async def deliver(self, alerts: Sequence[Alert]) -> None:
        """Send one message carrying ``alerts``.

        Raises DeliveryError when the message fails for good.
        """

    async def aclose(self) -> None:  # noqa: B027 - most channels hold no connection
        """Release connections."""

    def describe(self) -> str:
        """Return a secret-free description for logs and the ``check`` command."""
        return self.name


class DeliveryStats:
    """Alerts sent and failed per channel, read by the metrics handler."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()


class ChannelQueue:
    """A channel's queue and the task that empties it."""

    def __init__(self, channel: Channel, stats: DeliveryStats, outbox: Outbox) -> None:
        self.channel = channel
        self.stats = stats
        self.outbox = outbox
        self.queue: asyncio.Queue[tuple[int, Alert]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._last_delivery = 0.0
        self._in_flight = 0

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._run(), name=f"notify-{self.channel.name}"
        )

    @property
    def pending(self) -> int:
        return self.queue.qsize() + self._in_flight

    def enqueue(self, alert: Alert, entry_id: int | None = None) -> None:
        """Queue an alert, recording it in the outbox unless it came from there."""
        if entry_id is None:
            entry_id = self.outbox.add(self.channel.name, alert)
        self.queue.put_nowait((entry_id, alert))

    async def _run(self) -> None:
        while True:
            first = await self.queue.get()
            wait = self._last_delivery + self.channel.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            batch = [first]
            while len(batch) < self.channel.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self._in_flight = len(batch)
            try:
                await self._deliver([alert for _, alert in batch])
                # Delivered, or failed for good after every retry: either way
                # it leaves the outbox. A cancelled delivery stays in it.
                self.outbox.done(entry_id for entry_id, _ in batch)
            finally:
                self._in_flight = 0
                self._last_delivery = time.monotonic()

    async def _deliver(self, batch: list[Alert]) -> None:
        extra: dict[str, Any] = {
            "channel": self.channel.name,
            "count": len(batch),
            "alert_type": batch[0].type.value,
            "alert_kind": batch[0].kind,
            "subject": batch[0].subject,
        }
        ok = False
        try:
            await self.channel.deliver(batch)
        except DeliveryError as exc:
            self.stats.failed[self.channel.name] += len(batch)
            logger.error(
                "Alert delivery failed",
                extra={**extra, "event": "alert_failed", "error": str(exc)},
            )
        except Exception as exc:
            self.stats.failed[self.channel.name] += len(batch)
            logger.exception(
                "Alert delivery failed",
                extra={**extra, "event": "alert_failed", "error": str(exc)},
            )
        else:
            ok = True
            self.stats.sent[self.channel.name] += len(batch)
            logger.info(
                "Alert sent: %s",
                batch[0].title if len(batch) == 1 else f"{len(batch)} alerts",
                extra={**extra, "event": "alert_sent"},
            )
        # The metrics handlers push the new counts right away.
        signals.publish(signals.alert_delivered, self, channel=self.channel.name, ok=ok)

    async def stop(self, deadline: float) -> int:
        """Wait until the queue is empty or ``deadline`` (monotonic) passes.

        Returns how many alerts were still undelivered.
        """
        while self.pending and time.monotonic() < deadline:  # noqa: ASYNC110
            # Polling keeps the queue free of a second "idle" event to maintain.
            await asyncio.sleep(0.05)
        left = self.pending
        if self._task is not None:
            await cancel_and_wait(self._task)
        await self.channel.aclose()
        return left


class Notifier:
    """Subscribe to ``alert_raised`` and fan alerts out to every channel."""

    def __init__(
        self,
        channels: Sequence[Channel],
        stats: DeliveryStats | None = None,
        outbox_path: Path | None = None,
    ) -> None:
        self.stats = stats or DeliveryStats()
        self.outbox = Outbox(outbox_path)
        self.queues = [
            ChannelQueue(channel, self.stats, self.outbox) for channel in channels
        ]
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the channel tasks and subscribe; call inside the running loop.

        Alerts that a previous run left undelivered are queued first.
        """
        self._loop = asyncio.get_running_loop()
        by_name = {queue.channel.name: queue for queue in self.queues}
        left_over = self.outbox.load()
        for entry_id, channel, alert in left_over:
            queue = by_name.get(channel)
            if queue is None:
                self.outbox.done([entry_id])
                logger.warning(
                    "Dropped an undelivered alert for a channel no longer configured",
                    extra={
                        "event": "outbox_dropped",
                        "channel": channel,
                        "subject": alert.subject,
                    },
                )
                continue
            queue.enqueue(alert, entry_id)
        if left_over:
            logger.info(
                "Resending alerts left undelivered by the previous run",
                extra={"event": "outbox_resend", "count": len(left_over)},
            )
        self.outbox.start()
        for queue in self.queues:
            queue.start()
        signals.connect(signals.alert_raised, self._on_alert)

    def _on_alert(self, _sender: object, *, alert: Alert) -> None:
        if self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for queue in self.queues:
            if running is self._loop:
                queue.enqueue(alert)
            else:
                # Raised from a worker thread, such as a backup job.
                self._loop.call_soon_threadsafe(queue.enqueue, alert)

    async def stop(self, grace: float) -> None:
        """Finish in-flight alerts within ``grace`` seconds, then stop."""
        signals.alert_raised.disconnect(self._on_alert)
        deadline = time.monotonic() + grace
        for queue in self.queues:
            left = await queue.stop(deadline)
            if left:
                saved = self.outbox.path is not None
                logger.error(
                    "Alerts not delivered before shutdown%s",
                    "; kept for the next start" if saved else "",
                    extra={
                        "event": "alerts_abandoned",
                        "channel": queue.channel.name,
                        "count": left,
                        "kept": saved,
                    },
                )
        await self.outbox.stop()
