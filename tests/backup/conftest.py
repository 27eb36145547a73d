"""PostgreSQL fixtures for the backup tests: throwaway databases and worker settings.

The shared server from ``scripts/test-env.sh`` trusts every loopback
connection, so tests that need password authentication start a private
cluster of their own (:class:`AuthCluster`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.pushgateway import delete_group
from tests.support.services import required_env
from tests.support.slack import SlackReceiver
from tests.support.waiting import wait_for
from tests.support.worker import run_once

SUPERUSER = "postgres"
TEST_PASSWORD = "backup-test-password-7f3a"  # trust auth ignores it


class Postgres:
    """Run SQL on the shared test server as the superuser."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.created: list[str] = []

    def psql(self, database: str, sql: str) -> str:
        result = subprocess.run(
            [
                "psql",
                "--no-psqlrc",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"psql failed on {sql!r}: {result.stderr}"
        return result.stdout.strip()

    def create_database(self, label: str = "db") -> str:
        name = f"bk_{label}_{uuid.uuid4().hex[:8]}"
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return name

    def adopt(self, name: str) -> None:
        """Drop ``name`` at the end of the test, such as a restore target."""
        self.created.append(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            self.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_address() -> tuple[str, int]:
    return required_env("MOLO_TEST_PGHOST"), int(required_env("MOLO_TEST_PGPORT"))


@pytest.fixture
def pg(pg_address: tuple[str, int]) -> Iterator[Postgres]:
    server = Postgres(*pg_address)
    yield server
    server.drop_all()


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture
def backup_env(
    pg_address: tuple[str, int],
    backup_dir: Path,
    slack: SlackReceiver,
    pushgateway_url: str,
    prefix: str,
) -> Iterator[dict[str, str]]:
    """Settings for a backup worker that dumps nothing until a test names databases."""
    host, port = pg_address
    env = {
        "PGHOST": host,
        "PGPORT": str(port),
        "PGUSER": SUPERUSER,
        "PGPASSWORD": TEST_PASSWORD,
        "BACKUP_DIR": str(backup_dir),
        "BACKUP_GLOBALS": "false",
        "SLACK_WEBHOOK_URL": slack.url,
        "PROMETHEUS_PUSHGATEWAY": pushgateway_url,
        "INSTANCE_NAME": prefix,
        "LOG_LEVEL": "DEBUG",
    }
    yield env
    delete_group(pushgateway_url, "backup-worker", prefix)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class AuthCluster:
    """A private PostgreSQL cluster on loopback that checks scram-sha-256 passwords."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.bin = _postgres_bin()

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            capture_output=True,
            text=True,
        )

    def start(self) -> AuthCluster:
        self.directory.mkdir(parents=True)
        shutil.chown(self.directory, "postgres", "postgres")
        data = self.directory / "data"
        self._as_postgres(
            str(self.bin / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.directory / "server.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1",
            "start",
        )
        return self

    def psql(self, sql: str) -> None:
        self._as_postgres(
            "psql",
            "--no-psqlrc",
            "-h",
            str(self.directory),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        )

    def stop(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-m",
            "fast",
            "stop",
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def _postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    return versions[-1].parent


@pytest.fixture(scope="session")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthCluster]:
    root = Path("/tmp/molochain-test") / f"pg-auth-{uuid.uuid4().hex[:8]}"
    cluster = AuthCluster(root).start()
    yield cluster
    cluster.stop()


def file_names(directory: Path) -> set[str]:
    """Every file name below ``directory``, hidden ones included."""
    if not directory.exists():
        return set()
    return {
        str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir()
    }


def wait_for_file(directory: Path, pattern: str, timeout: float = 30) -> Path:
    found: Path | None = wait_for(
        lambda: next(iter(sorted(directory.rglob(pattern))), None),
        timeout=timeout,
        what=f"a file matching {pattern} under {directory}",
    )
    assert found is not None
    return found


@pytest.fixture
def backup_cli(
    backup_env: dict[str, str],
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``molochain-workers ARGS`` with the test's backup settings plus overrides."""

    def run(
        *args: str, timeout: float = 120, **overrides: str
    ) -> subprocess.CompletedProcess[str]:
        return run_once(list(args), {**backup_env, **overrides}, timeout=timeout)

    return run
