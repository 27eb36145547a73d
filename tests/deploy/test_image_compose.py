"""The image from compose/Dockerfile, run by compose/docker-compose.yml, end to end.

The private dockerd has no bridge network, so the stack runs with the host
network: the worker reaches the Slack receiver on 127.0.0.1 and nothing
leaves loopback.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from tests.deploy.conftest import COMPOSE_FILE, TEST_LABEL, run_compose
from tests.support.docker_env import Containers
from tests.support.slack import SlackReceiver
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGE_USER = 10001


def run_in_image(
    docker_host: str, image: str, entrypoint: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run one command in a labelled, network-less container that is removed after."""
    return subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            f"{TEST_LABEL}=1",
            "--entrypoint",
            entrypoint,
            image,
            *args,
        ],
        env={**os.environ, "DOCKER_HOST": docker_host},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_image_runs_as_non_root(docker_host: str, worker_image: str) -> None:
    result = run_in_image(docker_host, worker_image, "id", "-u")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(IMAGE_USER)


def test_image_has_pg_dump_and_tini(docker_host: str, worker_image: str) -> None:
    dump = run_in_image(docker_host, worker_image, "pg_dump", "-V")
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.startswith("pg_dump (PostgreSQL) ")
    tini = run_in_image(docker_host, worker_image, "/usr/bin/tini", "--version")
    assert tini.returncode == 0, tini.stderr


def test_image_entrypoint_and_healthcheck(
    docker_api: docker.APIClient, worker_image: str
) -> None:
    config = docker_api.inspect_image(worker_image)["Config"]  # type: ignore[no-untyped-call]
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "molochain-workers"]
    assert config["Cmd"] == ["health-monitor"]
    assert config["User"] == f"{IMAGE_USER}:{IMAGE_USER}"
    assert config["Healthcheck"]["Test"][1:3] == ["molochain-workers", "healthcheck"]
    names = {entry.split("=", 1)[0] for entry in config["Env"]}
    assert not names & {"PGPASSWORD", "SLACK_WEBHOOK_URL", "SMTP_PASSWORD"}
    assert not any(
        name.startswith("PIP_") and name != "PIP_NO_CACHE_DIR" for name in names
    )


def test_image_help_without_settings(docker_host: str, worker_image: str) -> None:
    result = run_in_image(docker_host, worker_image, "molochain-workers", "--help")
    assert result.returncode == 0, result.stderr
    assert "health-monitor" in result.stdout


class ComposeStack:
    """The production compose file run as one project on the private dockerd."""

    def __init__(self, directory: Path, project: str, env: dict[str, str]) -> None:
        self.directory = directory
        self.project = project
        self.env = env

    def files(self) -> list[str]:
        return [
            "-f",
            str(self.directory / "base.yml"),
            "-f",
            str(self.directory / "test.yml"),
        ]

    def run(
        self, *args: str, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return run_compose(
            [
                "--project-name",
                self.project,
                "--project-directory",
                str(self.directory),
                *self.files(),
                *args,
            ],
            self.env,
            timeout=timeout,
        )

    def logs(self, service: str) -> str:
        return self.run("logs", "--no-color", service).stdout


def write_stack_files(directory: Path, image: str, monitored: str) -> None:
    """Write the production compose file without networks, and a test override.

    docker-compose 1.29 cannot remove a key in an override file, and
    network_mode cannot be combined with networks, so the networks are left
    out of the copy instead. Relative paths in the copy become absolute,
    because it is written outside the compose directory.
    """
    base: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    base.pop("networks")
    for service in base["services"].values():
        service.pop("networks", None)
        build = service.get("build")
        if build:
            build["context"] = str(COMPOSE_FILE.parent.parent)
        for index, volume in enumerate(service.get("volumes", [])):
            if isinstance(volume, str) and volume.startswith("../"):
                service["volumes"][index] = str(COMPOSE_FILE.parent / volume)
    (directory / "base.yml").write_text(yaml.safe_dump(base), encoding="utf-8")

    override = {
        "services": {
            "health-monitor": {
                "image": image,
                "network_mode": "host",
                "labels": {TEST_LABEL: "1"},
                "environment": {
                    "CONTAINERS_TO_MONITOR": monitored,
                    "CHECK_INTERVAL": "5",
                    "LOG_LEVEL": "DEBUG",
                },
            }
        }
    }
    (directory / "test.yml").write_text(yaml.safe_dump(override), encoding="utf-8")


@pytest.fixture
def stack(
    tmp_path: Path,
    docker_host: str,
    worker_image: str,
    prefix: str,
    slack: SlackReceiver,
    containers: Containers,
) -> Iterator[ComposeStack]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "slack_webhook_url").write_text(slack.url, encoding="utf-8")
    (secrets / "pgpassword").write_text("", encoding="utf-8")
    (secrets / "smtp_password").write_text("", encoding="utf-8")
    for secret in secrets.iterdir():
        os.chown(secret, IMAGE_USER, IMAGE_USER)
        secret.chmod(0o400)

    socket = docker_host.removeprefix("unix://")
    write_stack_files(tmp_path, worker_image, containers.name("web"))
    env = {
        "DOCKER_HOST": docker_host,
        "DOCKER_SOCKET": socket,
        "DOCKER_GID": str(os.stat(socket).st_gid),
        "SECRETS_DIR": str(secrets),
        "INSTANCE_NAME": prefix,
    }
    compose_stack = ComposeStack(tmp_path, prefix, env)
    yield compose_stack
    down = compose_stack.run("down", "--volumes", "--remove-orphans", "--timeout", "10")
    assert down.returncode == 0, down.stderr


def test_compose_monitor_alerts_on_stop(
    stack: ComposeStack,
    containers: Containers,
    slack: SlackReceiver,
    docker_api: docker.APIClient,
) -> None:
    web = containers.run("web")
    up = stack.run("up", "-d", "--no-build", "health-monitor")
    assert up.returncode == 0, up.stderr

    wait_for(
        lambda: '"event": "connected"' in stack.logs("health-monitor"),
        timeout=60,
        interval=0.5,
        what=f"the monitor to connect; logs:\n{stack.logs('health-monitor')[-3000:]}",
    )
    [container] = docker_api.containers(
        filters={"label": f"com.docker.compose.project={stack.project}"}
    )
    assert container["Labels"][TEST_LABEL] == "1"

    docker_api.stop(web, timeout=1)
    alert = wait_for(
        lambda: [a for a in slack.attachments() if web in a.get("title", "")],
        timeout=30,
        interval=0.2,
        what=f"an alert about {web}; logs:\n{stack.logs('health-monitor')[-3000:]}",
    )
    assert alert[0]["color"] == "danger"

    logs = stack.logs("health-monitor")
    assert '"event": "alert_sent"' in logs
    assert '"worker": "health-monitor"' in logs
    assert slack.url not in logs

    init = docker_api.exec_create(container["Id"], ["cat", "/proc/1/cmdline"])["Id"]
    assert docker_api.exec_start(init).split(b"\0")[0] == b"/usr/bin/tini"
    check = docker_api.exec_create(
        container["Id"], ["molochain-workers", "healthcheck", "health-monitor"]
    )["Id"]
    output = docker_api.exec_start(check).decode()
    assert docker_api.exec_inspect(check)["ExitCode"] == 0, output
