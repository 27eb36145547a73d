"""Backup metrics pushed to the Pushgateway under job ``backup-worker``.

Values are read from ``status.json`` at push time, so the last-success
timestamp of each database survives a restart of the worker.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from handlers.backup.status import StatusStore
from handlers.metrics import Pusher, alert_metrics
from handlers.notifier import DeliveryStats
from reactor import signals

JOB = "backup-worker"


class BackupCollector(Collector):
    """Render every database's backup status as metrics."""

    def __init__(self, store: StatusStore, delivery: DeliveryStats | None) -> None:
        self.store = store
        self.delivery = delivery
        """Alert counts to include; None leaves them to the long-running worker."""

    def collect(self) -> Iterable[Metric]:
        status = self.store.load()
        labels = ["database"]
        last_success = GaugeMetricFamily(
            "backup_last_success_timestamp_seconds",
            "Start time of the last successful backup, in Unix seconds.",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "backup_last_duration_seconds",
            "Duration of the last backup attempt, in seconds.",
            labels=labels,
        )
        size = GaugeMetricFamily(
            "backup_last_size_bytes",
            "Size of the last successful backup file, in bytes.",
            labels=labels,
        )
        last_status = GaugeMetricFamily(
            "backup_last_status",
            "1 when the last backup attempt succeeded, else 0.",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "backup_failures",
            "Failed backup attempts since BACKUP_DIR was created.",
            labels=labels,
        )

        for name, entry in sorted(status.databases.items()):
            last_success.add_metric([name], entry.last_success_time)
            duration.add_metric([name], entry.last_duration_seconds)
            size.add_metric([name], entry.last_size_bytes)
            last_status.add_metric([name], entry.last_status)
            failures.add_metric([name], entry.failures_total)
        yield last_success
        yield duration
        yield size
        yield last_status
        yield failures
        if self.delivery is not None:
            yield from alert_metrics(self.delivery)


class BackupMetrics:
    """Push the backup metrics after every backup attempt."""

    def __init__(
        self,
        gateway: str,
        store: StatusStore,
        delivery: DeliveryStats,
        instance: str,
        *,
        one_off: bool = False,
    ) -> None:
        # A one-off command (``backup now``) adds its per-database values to
        # the group and leaves the worker's alert counters in place.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BackupCollector(store, None if one_off else delivery))
        self.pusher = Pusher(
            gateway,
            JOB,
            self.registry,
            lambda: {"instance": instance},
            replace_group=not one_off,
        )

    def start(self) -> None:
        """Start pushing; call inside the running event loop."""
        self.pusher.start()
        signals.connect(signals.backup_finished, self._on_finished)
        self.pusher.request()

    def _on_finished(self, _sender: object, **_payload: object) -> None:
        self.pusher.request()

    async def stop(self) -> None:
        signals.backup_finished.disconnect(self._on_finished)
        await self.pusher.stop()
