"""Fixtures that start or reach the real components the workers talk to.

``scripts/test-env.sh`` starts the shared ones (a private dockerd, PostgreSQL,
a Pushgateway, Prometheus) and exports their addresses as ``MOLO_TEST_*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.support.docker_env import Containers, unique_prefix
from tests.support.pushgateway import delete_group
from tests.support.services import required_env
from tests.support.slack import SlackReceiver
from tests.support.smtp import SmtpServer
from tests.support.worker import WorkerProcess


@pytest.fixture(scope="session")
def docker_host() -> str:
    return required_env("MOLO_TEST_DOCKER_HOST")


@pytest.fixture(scope="session")
def test_image() -> str:
    return required_env("MOLO_TEST_IMAGE")


@pytest.fixture(scope="session")
def pushgateway_url() -> str:
    return required_env("MOLO_TEST_PUSHGATEWAY")


@pytest.fixture(scope="session")
def docker_api(docker_host: str) -> Iterator[docker.APIClient]:
    client = docker.APIClient(base_url=docker_host, version="auto", timeout=30)
    yield client
    client.close()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return unique_prefix(request.node.name)


@pytest.fixture
def containers(
    docker_api: docker.APIClient, test_image: str, prefix: str
) -> Iterator[Containers]:
    made = Containers(docker_api, test_image, prefix)
    yield made
    made.remove_all()


@pytest.fixture
def slack() -> Iterator[SlackReceiver]:
    receiver = SlackReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def monitor_env(
    tmp_path: Path,
    docker_host: str,
    prefix: str,
    slack: SlackReceiver,
    smtp: SmtpServer,
    pushgateway_url: str,
) -> Iterator[dict[str, str]]:
    """Settings for a health monitor that watches only this test's containers."""
    env = {
        "DOCKER_HOST": docker_host,
        "HEALTH_LOG_DIR": str(tmp_path / "health"),
        "CONTAINERS_TO_MONITOR": f"{prefix}-*",
        "CHECK_INTERVAL": "30",
        "INSTANCE_NAME": prefix,
        "SLACK_WEBHOOK_URL": slack.url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_STARTTLS": "false",
        "SMTP_FROM": "monitor@example.test",
        "ALERT_EMAIL_TO": "ops@example.test",
        "PROMETHEUS_PUSHGATEWAY": pushgateway_url,
        "LOG_LEVEL": "DEBUG",
    }
    yield env
    delete_group(pushgateway_url, "health-monitor", prefix)


@pytest.fixture
def start_monitor() -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    """Start ``health-monitor`` processes; each is waited for until connected."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(["health-monitor"], env).start()
        started.append(worker)
        worker.wait_event("connected", timeout=30)
        return worker

    yield start
    for worker in started:
        worker.kill()
