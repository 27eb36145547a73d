"""The health monitor end to end against the private dockerd.

Each test runs the real ``molochain-workers health-monitor`` process and checks
the exact alerts at the Slack receiver and the SMTP server, and the gauge in
the Pushgateway.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.docker_env import Containers, settle
from tests.support.monitoring import StartMonitor, field, gauge, wait_attachments
from tests.support.pushgateway import read_samples
from tests.support.slack import SlackReceiver
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker

HEALTHCHECK = {
    "test": ["CMD-SHELL", "test -f /tmp/ok || { echo ok file missing; exit 1; }"],
    "interval": 300_000_000,
    "timeout": 1_000_000_000,
    "retries": 1,
    "start_period": 0,
}


def test_unhealthy_then_healthy(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
    smtp: SmtpServer,
) -> None:
    name = containers.run(
        "web", "touch /tmp/ok; exec sleep 600", healthcheck=HEALTHCHECK
    )
    wait_for(lambda: containers.health(name) == "healthy", what="healthy container")
    worker = start_monitor(monitor_env)
    gateway = monitor_env["PROMETHEUS_PUSHGATEWAY"]
    wait_for(
        lambda: gauge(gateway, monitor_env["INSTANCE_NAME"], name) == 1.0,
        what="gauge 1",
    )

    containers.exec(name, "sh", "-c", "echo probe says no >&2; rm /tmp/ok")
    [warning] = wait_attachments(slack, 1)
    assert warning["color"] == "warning"
    assert f"{name} is unhealthy" in warning["title"]
    assert field(warning, "Container") == name
    assert field(warning, "Image") == containers.image
    assert field(warning, "Host") == monitor_env["INSTANCE_NAME"]
    assert field(warning, "Time")
    assert field(warning, "Health check output") == "ok file missing"
    wait_for(
        lambda: gauge(gateway, monitor_env["INSTANCE_NAME"], name) == 0.0,
        what="gauge 0",
    )

    containers.exec(name, "touch", "/tmp/ok")
    attachments = wait_attachments(slack, 2)
    recovery = attachments[1]
    assert recovery["color"] == "good"
    assert f"{name} recovered" in recovery["title"]
    wait_for(
        lambda: gauge(gateway, monitor_env["INSTANCE_NAME"], name) == 1.0,
        what="gauge back to 1",
    )

    settle(1.5)
    assert len(slack.attachments()) == 2
    wait_for(lambda: len(smtp.messages) == 2, what="two emails")
    assert str(smtp.messages[0]["Subject"]).strip().startswith("[WARNING]")
    assert str(smtp.messages[1]["Subject"]).strip().startswith("[INFO]")
    assert worker.stop() == 0


def test_kill_then_start(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    name = containers.run("api")
    worker = start_monitor(monitor_env)
    gateway = monitor_env["PROMETHEUS_PUSHGATEWAY"]
    instance = monitor_env["INSTANCE_NAME"]
    wait_for(lambda: gauge(gateway, instance, name) == 1.0, what="gauge 1")

    containers.api.kill(name)
    [down] = wait_attachments(slack, 1)
    assert down["color"] == "danger"
    assert down["title"].endswith(f"Container {name} is down")
    assert field(down, "Exit code") == "137"
    assert "137" in down["text"]
    assert field(down, "Image") == containers.image
    wait_for(lambda: gauge(gateway, instance, name) == 0.0, what="gauge 0")

    # Delivery counts are pushed on delivery, not at the next heartbeat.
    def sent(channel: str) -> float | None:
        samples = read_samples(
            gateway, "alerts_sent_total", job="health-monitor", instance=instance
        )
        return samples.get(f"channel={channel}")

    wait_for(lambda: sent("slack") == 1.0, what="alerts_sent_total for Slack")
    wait_for(lambda: sent("email") == 1.0, what="alerts_sent_total for email")

    containers.api.start(name)
    attachments = wait_attachments(slack, 2)
    assert attachments[1]["color"] == "good"
    assert f"{name} recovered" in attachments[1]["title"]
    wait_for(lambda: gauge(gateway, instance, name) == 1.0, what="gauge 1 again")
    settle(1.5)
    assert len(slack.attachments()) == 2
    assert worker.stop() == 0


def test_out_of_memory(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    worker = start_monitor(monitor_env)
    # The main process allocates a 256 MiB buffer under a 16 MiB limit.
    name = containers.run(
        "hog", "sleep 0.5; dd if=/dev/zero of=/dev/null bs=256M count=1", memory="16m"
    )
    [down] = wait_attachments(slack, 1)
    assert down["color"] == "danger"
    assert down["title"].endswith(f"Container {name} is down")
    assert field(down, "Reason") == "oom"
    assert field(down, "Exit code") == "137"
    assert "out-of-memory" in down["text"]
    assert containers.api.inspect_container(name)["State"]["OOMKilled"] is True
    settle(1.0)
    assert len(slack.attachments()) == 1
    assert worker.stop() == 0


def test_simultaneous_kills_all_reported(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    names = [containers.run(f"n{i:02d}") for i in range(20)]
    worker = start_monitor(monitor_env)
    # Kills from many threads make the daemon deliver some events slightly
    # out of time order; none may be taken for a repeat.
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(containers.api.kill, names))
    wait_for(lambda: len(worker.events("transition")) >= 20, what="20 transitions")
    downs = {line["container"] for line in worker.events("transition")}
    assert downs == set(names)
    wait_attachments(slack, 20)
    settle(1.5)
    titles = sorted(a["title"] for a in slack.attachments())
    assert len(titles) == 20
    assert all(title.endswith("is down") for title in titles)
    assert worker.stop() == 0


def test_exact_names_filtered_by_engine(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    watched = containers.run("watched")
    other = containers.run("other")
    worker = start_monitor({**monitor_env, "CONTAINERS_TO_MONITOR": watched})
    containers.api.kill(other)
    containers.api.kill(watched)
    [down] = wait_attachments(slack, 1)
    assert down["title"].endswith(f"Container {watched} is down")
    settle(1.0)
    assert len(slack.attachments()) == 1
    names = {line["container"] for line in worker.events("transition")}
    assert names == {watched}
    # The Engine filtered the other container's kill and die out: only the
    # watched container's two events reached the process.
    gateway = monitor_env["PROMETHEUS_PUSHGATEWAY"]
    instance = monitor_env["INSTANCE_NAME"]

    def events_seen() -> float | None:
        samples = read_samples(
            gateway,
            "health_monitor_events_total",
            job="health-monitor",
            instance=instance,
        )
        return samples.get("")

    wait_for(lambda: events_seen() == 2.0, what="two events counted")
    assert worker.stop() == 0
