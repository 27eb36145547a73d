"""Push metrics to a Prometheus Pushgateway.

Each push is a PUT that replaces the whole group (job plus ``instance``), so a
container that is gone stops being reported instead of lingering: the
Pushgateway never expires series on its own. The ``instance`` grouping key
keeps monitors on several hosts from overwriting each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, push_to_gateway, pushadd_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from tenacity import wait_exponential

from handlers.notifier import DeliveryStats
from reactor import signals
from reactor.lifecycle import cancel_and_wait
from reactor.state import ContainerState, Health

logger = logging.getLogger(__name__)

PUSH_TIMEOUT = 10.0
"""Seconds for a whole push. urllib's own timeout applies to each socket read,
so a gateway that trickles its response would hold a push without it."""
FINAL_PUSH_TIMEOUT = 3.0
"""Seconds the last push at shutdown may take on top of the alerts' grace."""
RETRY_MAX_WAIT = 30.0


async def run_with_deadline(
    func: Callable[[], None], seconds: float, name: str
) -> None:
    """Run blocking ``func`` on a daemon thread; raise TimeoutError after ``seconds``.

    A thread of asyncio's default executor that is still blocked would hold
    the worker's exit until it ends. A daemon thread does not.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            func()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    await asyncio.wait_for(future, timeout=seconds)


class Pusher:
    """Push one registry as one group, coalescing requests and retrying failures.

    :meth:`request` never blocks: a push already waiting covers every request
    made before it runs, and a failed push is retried with capped exponential
    backoff until it succeeds or a newer push replaces it.
    """

    def __init__(
        self,
        gateway: str,
        job: str,
        registry: CollectorRegistry,
        grouping_key: Callable[[], Mapping[str, str]],
        *,
        replace_group: bool = True,
    ) -> None:
        self.gateway = gateway
        # PUT replaces the whole group; POST replaces only the pushed names,
        # which a one-off command uses so it leaves the worker's counters.
        self.replace_group = replace_group
        self.job = job
        self.registry = registry
        self.grouping_key = grouping_key
        self.pushes = 0
        self.failures = 0
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wait = wait_exponential(multiplier=0.5, min=0.5, max=RETRY_MAX_WAIT)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"push-{self.job}")

    def request(self) -> None:
        """Ask for a push of the current values soon."""
        self._wanted.set()

    def push_now(self) -> None:
        """Push synchronously; raises on failure."""
        push = push_to_gateway if self.replace_group else pushadd_to_gateway
        push(
            self.gateway,
            job=self.job,
            registry=self.registry,
            grouping_key=dict(self.grouping_key()),
            timeout=PUSH_TIMEOUT,
        )

    async def _run(self) -> None:
        failures_in_row = 0
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await run_with_deadline(self.push_now, PUSH_TIMEOUT, f"push-{self.job}")
            except Exception as exc:  # noqa: BLE001 - any push failure is retried
                failures_in_row += 1
                self.failures += 1
                delay = min(RETRY_MAX_WAIT, 0.5 * 2 ** min(failures_in_row - 1, 6))
                logger.warning(
                    "Pushgateway push failed, retrying",
                    extra={
                        "event": "push_retry",
                        "job": self.job,
                        "attempt": failures_in_row,
                        "retry_in_seconds": delay,
                        "error": str(exc) or type(exc).__name__,
                    },
                )
                # A new request ends the wait early; either way push again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), timeout=delay)
                self._wanted.set()
                continue
            if failures_in_row:
                logger.info(
                    "Pushgateway push succeeded after failures",
                    extra={
                        "event": "push_recovered",
                        "job": self.job,
                        "failed_attempts": failures_in_row,
                    },
                )
            failures_in_row = 0
            self.pushes += 1

    async def stop(self, final_push: bool = True) -> None:
        """Cancel the task and push the final values once."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        if final_push:
            try:
                await run_with_deadline(
                    self.push_now, FINAL_PUSH_TIMEOUT, f"push-{self.job}"
                )
            except Exception as exc:  # noqa: BLE001 - the worker is exiting anyway
                logger.warning(
                    "Final Pushgateway push failed",
                    extra={
                        "event": "push_failed",
                        "job": self.job,
                        "error": str(exc) or type(exc).__name__,
                    },
                )


def alert_metrics(stats: DeliveryStats) -> Iterable[Metric]:
    """Yield alerts sent and failed per channel."""
    sent = CounterMetricFamily(
        "alerts_sent", "Alerts delivered, per channel.", labels=["channel"]
    )
    failed = CounterMetricFamily(
        "alerts_failed",
        "Alerts that failed after every retry, per channel.",
        labels=["channel"],
    )
    for channel in sorted(set(stats.sent) | set(stats.failed)):
        sent.add_metric([channel], stats.sent[channel])
        failed.add_metric([channel], stats.failed[channel])
    yield sent
    yield failed


class MonitorCollector(Collector):
    """Render the monitor's current state as metrics at push time."""

    def __init__(self, delivery: DeliveryStats) -> None:
        self.delivery = delivery
        self.states: dict[str, ContainerState] = {}
        self.stats: object | None = None

    def collect(self) -> Iterable[Metric]:
        health = GaugeMetricFamily(
            "container_health",
            "1 when the container is running and healthy, else 0.",
            labels=["container"],
        )
        counts = GaugeMetricFamily(
            "health_monitor_containers",
            "Monitored containers per state.",
            labels=["state"],
        )
        tally = dict.fromkeys(Health, 0)
        for name, state in sorted(self.states.items()):
            if state.removed:
                # Gone: its series leaves the group instead of reading 0.
                continue
            health.add_metric([name], 1.0 if state.health == Health.UP else 0.0)
            tally[state.health] += 1
        for value, count in tally.items():
            counts.add_metric([value.value], count)
        yield health
        yield counts

        stats = self.stats
        if stats is not None:
            yield CounterMetricFamily(
                "health_monitor_events",
                "Docker container events received.",
                value=getattr(stats, "events_seen", 0),
            )
            yield CounterMetricFamily(
                "health_monitor_events_malformed",
                "Docker events ignored because they lacked required fields.",
                value=getattr(stats, "events_malformed", 0),
            )
            yield CounterMetricFamily(
                "health_monitor_transitions",
                "Container state transitions.",
                value=getattr(stats, "transitions", 0),
            )
            yield CounterMetricFamily(
                "health_monitor_reconnects",
                "Reconnections to the Docker events stream.",
                value=getattr(stats, "reconnects", 0),
            )
            yield GaugeMetricFamily(
                "health_monitor_last_event_timestamp_seconds",
                "Daemon time of the last event received, in Unix seconds.",
                value=getattr(stats, "last_event_time", 0.0),
            )
            yield GaugeMetricFamily(
                "health_monitor_connected",
                "1 while the events stream is open.",
                value=1.0 if getattr(stats, "connected", False) else 0.0,
            )
        yield from alert_metrics(self.delivery)


class MonitorMetrics:
    """Metrics handler of the health monitor: push after transitions and heartbeats."""

    JOB = "health-monitor"

    def __init__(
        self, gateway: str, delivery: DeliveryStats, instance: Callable[[], str]
    ) -> None:
        self.collector = MonitorCollector(delivery)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.pusher = Pusher(
            gateway, self.JOB, self.registry, lambda: {"instance": instance()}
        )

    def start(self) -> None:
        self.pusher.start()
        signals.connect(signals.container_transition, self._on_transition)
        signals.connect(signals.monitor_heartbeat, self._on_heartbeat)
        signals.connect(signals.alert_delivered, self._on_delivered)

    def _on_transition(self, sender: object, **_payload: object) -> None:
        self._refresh(sender)
        self.pusher.request()

    def _on_heartbeat(self, sender: object, **_payload: object) -> None:
        self._refresh(sender)
        self.pusher.request()

    def _on_delivered(self, _sender: object, **_payload: object) -> None:
        self.pusher.request()

    def _refresh(self, sender: object) -> None:
        machine = getattr(sender, "machine", None)
        if machine is not None:
            self.collector.states = dict(machine.states)
        self.collector.stats = getattr(sender, "stats", None)

    async def stop(self) -> None:
        signals.container_transition.disconnect(self._on_transition)
        signals.monitor_heartbeat.disconnect(self._on_heartbeat)
        signals.alert_delivered.disconnect(self._on_delivered)
        await self.pusher.stop()
