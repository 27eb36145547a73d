"""Reading what a running health monitor sent: Slack attachments and gauges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.pushgateway import read_samples
from tests.support.slack import SlackReceiver
from tests.support.waiting import wait_for
from tests.support.worker import WorkerProcess

StartMonitor = Callable[[dict[str, str]], WorkerProcess]
"""The ``start_monitor`` fixture: start a monitor with these settings."""


def field(attachment: dict[str, Any], title: str) -> str | None:
    for entry in attachment.get("fields", []):
        if entry["title"] == title:
            return str(entry["value"])
    return None


def gauge(gateway: str, instance: str, container: str) -> float | None:
    samples = read_samples(
        gateway, "container_health", job="health-monitor", instance=instance
    )
    return samples.get(f"container={container}")


def wait_attachments(
    slack: SlackReceiver, count: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    def enough() -> bool:
        return len(slack.attachments()) >= count

    wait_for(enough, timeout=timeout, what=f"{count} Slack attachment(s)")
    return slack.attachments()
