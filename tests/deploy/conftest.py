"""Paths, parsers and fixtures shared by the deployment tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pushgateway import delete_group
from tests.support.services import required_env
from tests.support.slack import SlackReceiver
from tests.support.worker import run_once

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROMTAIL_CONFIG = REPO / "promtail" / "config.yml"
ALLOY_CONFIG = REPO / "promtail" / "config.alloy"
DASHBOARD = COMPOSE_DIR / "grafana" / "molochain-dashboard.json"

WORKER_IMAGE = "molochain-test/workers:latest"
TEST_LABEL = "molochain-test"


def run_compose(
    args: list[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run Debian's ``docker-compose`` with only PATH and ``env`` set.

    A clean environment keeps the caller's shell variables (LOG_LEVEL, say)
    out of the interpolation under test.
    """
    return subprocess.run(
        ["docker-compose", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def compose_config(env_file: Path, env: Mapping[str, str] | None = None) -> Any:
    """Return the compose file as ``docker-compose config`` resolves it."""
    result = run_compose(
        [
            "--project-directory",
            str(COMPOSE_DIR),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a compose ``.env`` file: KEY=VALUE lines, ``#`` comments."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, _, value = stripped.partition("=")
        values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="session")
def base_image() -> str:
    return required_env("MOLO_TEST_BASE_IMAGE")


class WheelServer:
    """Serve a wheelhouse over HTTP on 127.0.0.1 for ``pip --find-links``."""

    # A fixed port keeps the PIP_FIND_LINKS build argument, and with it
    # Docker's layer cache, the same from one run to the next.
    PORT = 19092

    def __init__(self, directory: Path) -> None:
        handler = partial(_QuietHandler, directory=str(directory))
        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", self.PORT), handler)
        except OSError:
            # In use: any free port works, at the cost of a full rebuild.
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> WheelServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def build_wheelhouse(root: Path) -> Path:
    """Download the project's dependencies and setuptools as wheels, once per pyproject.

    The project itself is left out: the image builds it from the sources in
    the build context.
    """
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    directory = root / "wheelhouse" / digest
    done = directory / ".complete"
    if done.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(directory),
            str(REPO),
            "setuptools",
        ],
        check=True,
        timeout=600,
    )
    for wheel in directory.glob("molochain_workers-*.whl"):
        wheel.unlink()
    done.touch()
    return directory


@pytest.fixture(scope="session")
def worker_image(docker_host: str, base_image: str) -> Iterator[str]:
    """Build compose/Dockerfile on the private dockerd from the offline base image.

    The registries are reachable only through a proxy that containers do not
    trust, so pip installs from a local wheelhouse over loopback, which needs
    the host network during the build. Docker's layer cache keeps repeated
    builds fast while the sources are unchanged.
    """
    root = Path(required_env("MOLO_TEST_ROOT"))
    wheels = WheelServer(build_wheelhouse(root)).start()
    try:
        result = subprocess.run(
            [
                "docker",
                "build",
                "--network",
                "host",
                "--force-rm",
                "--file",
                str(DOCKERFILE),
                "--tag",
                WORKER_IMAGE,
                "--label",
                f"{TEST_LABEL}=1",
                "--build-arg",
                f"BASE_IMAGE={base_image}",
                # Debian bookworm's own client, which the offline base carries.
                "--build-arg",
                "PG_MAJOR=15",
                "--build-arg",
                "PIP_NO_INDEX=1",
                "--build-arg",
                f"PIP_FIND_LINKS={wheels.url}",
                str(REPO),
            ],
            env={**os.environ, "DOCKER_HOST": docker_host},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        wheels.stop()
    assert result.returncode == 0, (
        f"image build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    yield WORKER_IMAGE


class BackupRun:
    """One real ``molochain-workers backup now`` run against the test PostgreSQL."""

    def __init__(self, backup_dir: Path, instance: str, database: str) -> None:
        self.backup_dir = backup_dir
        self.instance = instance
        self.database = database

    @property
    def log_file(self) -> Path:
        return self.backup_dir / "backup.log"


@pytest.fixture
def backup_run(
    tmp_path: Path, prefix: str, pushgateway_url: str, slack: SlackReceiver
) -> Iterator[BackupRun]:
    """Dump a throwaway database once, pushing metrics and alerting to ``slack``."""
    host = required_env("MOLO_TEST_PGHOST")
    port = required_env("MOLO_TEST_PGPORT")
    database = prefix.replace("-", "_")
    psql = ["psql", "-h", host, "-p", port, "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
    subprocess.run(
        [*psql, "-d", "postgres", "-c", f'CREATE DATABASE "{database}"'],
        check=True,
        capture_output=True,
        timeout=60,
    )
    instance = f"{prefix}-backup"
    run = BackupRun(tmp_path / "backups", instance, database)
    try:
        result = run_once(
            ["backup", "now", "--database", database],
            {
                "PGHOST": host,
                "PGPORT": port,
                "PGUSER": "postgres",
                # The shared test server trusts loopback and ignores it.
                "PGPASSWORD": "deploy-test-password",
                "BACKUP_DIR": str(run.backup_dir),
                "BACKUP_GLOBALS": "false",
                "SLACK_WEBHOOK_URL": slack.url,
                "PROMETHEUS_PUSHGATEWAY": pushgateway_url,
                "INSTANCE_NAME": instance,
                "LOG_LEVEL": "DEBUG",
            },
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        yield run
    finally:
        delete_group(pushgateway_url, "backup-worker", instance)
        subprocess.run(
            [*psql, "-d", "postgres", "-c", f'DROP DATABASE IF EXISTS "{database}"'],
            check=False,
            capture_output=True,
            timeout=60,
        )
