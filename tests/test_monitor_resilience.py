"""The health monitor across restarts, outages and misbehaving peers."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docker_env import Containers, PrivateDockerd, settle
from tests.support.monitoring import StartMonitor, field, gauge, wait_attachments
from tests.support.pushgateway import PrivatePushgateway, read_samples
from tests.support.slack import SlackReceiver
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker


def titles(slack: SlackReceiver) -> list[str]:
    return [a["title"].split(" ", 1)[1] for a in slack.attachments()]


def test_missing_container_at_start(
    prefix: str,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    ghost = f"{prefix}-ghost"
    worker = start_monitor({**monitor_env, "CONTAINERS_TO_MONITOR": ghost})
    [down] = wait_attachments(slack, 1)
    assert down["color"] == "danger"
    assert down["title"].endswith(f"Container {ghost} is down")
    assert field(down, "Reason") == "missing"
    assert "does not exist" in down["text"]
    instance = monitor_env["INSTANCE_NAME"]
    gateway = monitor_env["PROMETHEUS_PUSHGATEWAY"]
    wait_for(lambda: gauge(gateway, instance, ghost) == 0.0, what="gauge 0")
    settle(1.0)
    assert len(slack.attachments()) == 1
    assert worker.stop() == 0


def test_worker_restart_repeats_nothing(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    name = containers.run("db")
    first = start_monitor(monitor_env)
    containers.api.kill(name)
    wait_attachments(slack, 1)
    assert first.stop() == 0

    second = start_monitor(monitor_env)
    settle(2.0)
    assert titles(slack) == [f"Container {name} is down"]

    containers.api.start(name)
    wait_attachments(slack, 2)
    assert titles(slack)[1] == f"Container {name} recovered"
    assert second.stop() == 0

    # A transition while no monitor runs is replayed from the daemon's ring.
    containers.api.kill(name)
    third = start_monitor(monitor_env)
    wait_attachments(slack, 3)
    settle(1.5)
    assert titles(slack) == [
        f"Container {name} is down",
        f"Container {name} recovered",
        f"Container {name} is down",
    ]
    assert third.stop() == 0


@pytest.fixture
def restartable_dockerd(docker_host: str, test_image: str) -> Iterator[PrivateDockerd]:
    # A short path: dockerd's containerd sockets must fit in 108 bytes.
    directory = Path("/tmp/molochain-test") / f"dr-{uuid.uuid4().hex[:6]}"
    daemon = PrivateDockerd(directory, test_image).start()
    daemon.import_image_from(docker_host)
    yield daemon
    try:
        client = daemon.client()
        for entry in client.containers(all=True, filters={"label": "molochain-test"}):
            client.remove_container(entry["Id"], force=True)
        client.close()
    finally:
        daemon.stop()


@pytest.mark.slow
def test_dockerd_restart_reconnects(
    restartable_dockerd: PrivateDockerd,
    test_image: str,
    prefix: str,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    api = restartable_dockerd.client()
    containers = Containers(api, test_image, prefix)
    name = containers.run("cache")
    worker = start_monitor({**monitor_env, "DOCKER_HOST": restartable_dockerd.host})

    restartable_dockerd.stop()
    worker.wait_event("stream_ended")
    restartable_dockerd.start()
    worker.wait_event("connected", count=2, timeout=40)
    assert slack.attachments() == []

    api = restartable_dockerd.client()
    assert api.inspect_container(name)["State"]["Running"] is True
    api.kill(name)
    [down] = wait_attachments(slack, 1)
    assert down["title"].endswith(f"Container {name} is down")
    assert field(down, "Exit code") == "137"
    assert worker.events("docker_retry")
    assert worker.stop() == 0


@pytest.mark.slow
def test_restart_loop_alerts_are_bounded(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    env = {
        **monitor_env,
        "RESTART_LOOP_THRESHOLD": "3",
        "RESTART_LOOP_WINDOW": "60",
        # Longer than Docker's longest back-off in this test (3.2 s).
        "RESTART_LOOP_STABLE": "5",
    }
    worker = start_monitor(env)
    # Six runs die at once, then the seventh stays up: Docker restarts it
    # with a doubling back-off, as a crash-looping service would be.
    script = (
        "n=$(cat /tmp/runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/runs; "
        "[ $n -ge 7 ] && exec sleep 600; exit 3"
    )
    name = containers.run("loop", script, restart="always")
    wait_attachments(slack, 6, timeout=40)
    settle(2.0)
    assert titles(slack) == [
        f"Container {name} is down",
        f"Container {name} recovered",
        f"Container {name} is down",
        f"Container {name} recovered",
        f"Container {name} is restarting repeatedly",
        f"Container {name} is stable again",
    ]
    attachments = slack.attachments()
    assert [a["color"] for a in attachments] == [
        "danger",
        "good",
        "danger",
        "good",
        "danger",
        "good",
    ]
    assert field(attachments[4], "Restarts") == "3"
    assert field(attachments[5], "Restarts") == "6"
    assert worker.stop() == 0


def test_slack_rate_limit_then_success(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    name = containers.run("svc")
    worker = start_monitor(monitor_env)
    slack.respond(429, {"Retry-After": "1"})
    containers.api.kill(name)
    wait_for(lambda: len(slack.accepted) == 1, what="one accepted Slack message")
    settle(1.5)
    assert [r.status for r in slack.requests] == [429, 200]
    assert slack.requests[1].time - slack.requests[0].time >= 1.0
    assert len(slack.attachments()) == 1
    assert worker.events("alert_retry")
    assert worker.stop() == 0


def test_slack_down_email_still_sent(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
    smtp: SmtpServer,
) -> None:
    name = containers.run("svc")
    slack.respond_always(500)
    worker = start_monitor({**monitor_env, "SHUTDOWN_TIMEOUT": "1"})
    containers.api.kill(name)
    wait_for(lambda: len(smtp.messages) == 1, what="one email")
    message = smtp.messages[0]
    assert str(message["Subject"]).strip() == f"[ERROR] Container {name} is down"
    assert message["To"] == "ops@example.test"
    body = message.get_body()
    assert body is not None
    assert "Exit code" in body.get_content()
    assert "137" in body.get_content()
    wait_for(lambda: len(slack.requests) >= 2, what="Slack retries")
    assert slack.accepted == []
    assert worker.stop() == 0


@pytest.mark.slow
def test_pushgateway_outage_recovers(
    tmp_path: Path,
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
) -> None:
    gateway = PrivatePushgateway(tmp_path).start()
    try:
        name = containers.run("svc")
        instance = monitor_env["INSTANCE_NAME"]
        worker = start_monitor({**monitor_env, "PROMETHEUS_PUSHGATEWAY": gateway.url})
        wait_for(lambda: gauge(gateway.url, instance, name) == 1.0, what="gauge 1")

        gateway.stop()
        containers.api.kill(name)
        worker.wait_event("push_retry")
        gateway.start()
        wait_for(
            lambda: gauge(gateway.url, instance, name) == 0.0,
            timeout=30,
            what="gauge 0 after the outage",
        )
        sent = read_samples(
            gateway.url, "alerts_sent_total", job="health-monitor", instance=instance
        )
        assert sent.get("channel=slack") == 1.0
        worker.wait_event("push_recovered")
        assert worker.stop() == 0
    finally:
        gateway.stop()


def test_quiet_stream_is_not_an_error(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    name = containers.run("idle")
    worker = start_monitor({**monitor_env, "DOCKER_TIMEOUT": "1"})
    settle(4.0)
    assert worker.events("stream_ended") == []
    assert worker.events("docker_retry") == []
    containers.api.kill(name)
    [down] = wait_attachments(slack, 1)
    assert down["title"].endswith(f"Container {name} is down")
    assert len(worker.events("connected")) == 1
    assert worker.stop() == 0


def test_sigterm_finishes_alert_in_flight(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
    smtp: SmtpServer,
) -> None:
    name = containers.run("svc")
    worker = start_monitor(monitor_env)
    slack.respond(200, delay=1.5)
    containers.api.kill(name)
    worker.wait_event("transition")
    assert worker.stop() == 0
    assert len(slack.accepted) == 1
    assert len(smtp.messages) == 1
    assert worker.events("stopped")


def test_recreate_and_rename(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    web = containers.run("web")
    old = containers.run("old")
    worker = start_monitor(monitor_env)
    gateway = monitor_env["PROMETHEUS_PUSHGATEWAY"]
    instance = monitor_env["INSTANCE_NAME"]

    # Recreated under the same name, as compose does on a config change.
    containers.api.remove_container(web, force=True)
    containers.created.remove(web)
    wait_attachments(slack, 1)
    containers.run("web")
    wait_attachments(slack, 2)
    assert titles(slack) == [f"Container {web} is down", f"Container {web} recovered"]

    new = containers.name("new")
    containers.api.rename(old, new)
    containers.created.append(new)
    wait_for(lambda: gauge(gateway, instance, new) == 1.0, what="gauge of the new name")
    wait_for(
        lambda: gauge(gateway, instance, old) is None, what="old name's series gone"
    )
    settle(1.0)
    assert len(slack.attachments()) == 2
    assert worker.stop() == 0


def test_undelivered_alert_sent_after_restart(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    name = containers.run("svc")
    env = {**monitor_env, "SHUTDOWN_TIMEOUT": "1"}
    slack.respond_always(503)
    first = start_monitor(env)
    containers.api.kill(name)
    first.wait_event("alert_retry")
    assert first.stop() == 0
    assert first.events("alerts_abandoned")[0]["kept"] is True

    slack.respond_always(200)
    second = start_monitor(env)
    wait_for(lambda: len(slack.accepted) == 1, what="the kept alert")
    settle(1.5)
    [down] = slack.attachments()
    assert down["title"].endswith(f"Container {name} is down")
    assert field(down, "Exit code") == "137"
    assert second.events("outbox_resend")[0]["count"] == 1
    assert second.stop() == 0

    # Sent once: a third start has nothing left to resend.
    third = start_monitor(env)
    settle(1.5)
    assert len(slack.accepted) == 1
    assert third.events("outbox_resend") == []
    assert third.stop() == 0


def test_alert_survives_sigkill(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    name = containers.run("svc")
    slack.respond_always(503)
    first = start_monitor(monitor_env)
    containers.api.kill(name)
    first.wait_event("alert_retry")
    first.kill()

    slack.respond_always(200)
    second = start_monitor(monitor_env)
    wait_for(lambda: len(slack.accepted) == 1, what="the alert after SIGKILL")
    [down] = slack.attachments()
    assert down["title"].endswith(f"Container {name} is down")
    assert second.stop() == 0


class TricklingServer:
    """Accept HTTP requests and send one byte of the response every half second."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(
                target=self._trickle, args=(connection,), daemon=True
            ).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10_000:
                if self.closing.wait(0.5):
                    return
                try:
                    connection.send(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.closing.set()
        self.sock.close()


@pytest.mark.slow
def test_trickling_pushgateway_bounds_shutdown(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    server = TricklingServer()
    try:
        name = containers.run("svc")
        env = {
            **monitor_env,
            "PROMETHEUS_PUSHGATEWAY": f"http://127.0.0.1:{server.port}",
            "SHUTDOWN_TIMEOUT": "2",
        }
        worker = start_monitor(env)
        containers.api.kill(name)
        wait_attachments(slack, 1)
        # A push has no end of its own here; the deadline ends it.
        [retry] = worker.wait_event("push_retry", timeout=20)[:1]
        assert retry["error"] == "TimeoutError"
        assert worker.stop(timeout=15) == 0
        assert worker.events("push_failed")
        assert worker.events("stopped")
    finally:
        server.close()
