"""Test containers on the private dockerd, and a dockerd a test may restart."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker

from tests.support.waiting import wait_for

TEST_LABEL = "molochain-test"


class Containers:
    """Create labelled test containers with ``--network none``, removed at the end."""

    def __init__(self, api: docker.APIClient, image: str, prefix: str) -> None:
        self.api = api
        self.image = image
        self.prefix = prefix
        self.created: list[str] = []

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def run(
        self,
        suffix: str,
        command: Sequence[str] | str = ("sleep", "600"),
        *,
        healthcheck: dict[str, Any] | None = None,
        memory: str | None = None,
        restart: str | None = None,
        start: bool = True,
    ) -> str:
        """Create (and by default start) a container; return its name."""
        name = self.name(suffix)
        host_config = self.api.create_host_config(
            network_mode="none",
            mem_limit=memory,
            memswap_limit=memory,
            restart_policy={"Name": restart} if restart else None,
        )
        self.api.create_container(
            self.image,
            command=list(command)
            if not isinstance(command, str)
            else ["sh", "-c", command],
            name=name,
            labels={TEST_LABEL: "1"},
            host_config=host_config,
            healthcheck=healthcheck,
            network_disabled=True,
        )
        self.created.append(name)
        if start:
            self.api.start(name)
        return name

    def exec(self, name: str, *command: str) -> int:
        exec_id = self.api.exec_create(name, list(command))["Id"]
        self.api.exec_start(exec_id)
        code: int = self.api.exec_inspect(exec_id)["ExitCode"]
        return code

    def health(self, name: str) -> str:
        state = self.api.inspect_container(name)["State"]
        return str((state.get("Health") or {}).get("Status", ""))

    def remove_all(self) -> None:
        for name in self.created:
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_container(name, force=True)


def unique_prefix(test_name: str) -> str:
    clean = "".join(c if c.isalnum() else "-" for c in test_name.lower())[:30].strip(
        "-"
    )
    return f"mt-{clean}-{uuid.uuid4().hex[:6]}"


class PrivateDockerd:
    """A dockerd with ``--live-restore`` that a test may stop and start again."""

    def __init__(self, directory: Path, image: str) -> None:
        self.directory = directory
        self.image = image
        self.socket = directory / "docker.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> PrivateDockerd:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [
                "dockerd",
                "--host",
                self.host,
                "--data-root",
                str(self.directory / "data"),
                "--exec-root",
                str(self.directory / "exec"),
                "--pidfile",
                str(self.directory / "docker.pid"),
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip6tables=false",
                "--live-restore",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_for(
            self._ready, timeout=30, interval=0.2, what=f"dockerd at {self.socket}"
        )
        return self

    def _ready(self) -> bool:
        try:
            client = docker.APIClient(base_url=self.host, version="auto", timeout=2)
            client.ping()
            client.close()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
            if self.socket.exists():
                self.socket.unlink()

    def import_image_from(self, source_host: str) -> None:
        """Copy the test image from another daemon with docker save | docker load."""
        saver = subprocess.Popen(
            ["docker", "--host", source_host, "image", "save", self.image],
            stdout=subprocess.PIPE,
        )
        subprocess.run(
            ["docker", "--host", self.host, "image", "load", "-q"],
            stdin=saver.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        assert saver.wait() == 0

    def client(self) -> docker.APIClient:
        return docker.APIClient(base_url=self.host, version="auto", timeout=30)


def docker_available() -> bool:
    return shutil.which("dockerd") is not None and os.geteuid() == 0


def settle(seconds: float) -> None:
    """Let time pass when the assertion is that nothing happens."""
    time.sleep(seconds)
