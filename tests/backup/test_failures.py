"""Failed backups: one alert each, no partial file, older backups and metrics kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.backup.job import RunLock
from tests.backup.conftest import (
    SUPERUSER,
    AuthCluster,
    Postgres,
    file_names,
    free_port,
    wait_for_file,
)
from tests.support.pushgateway import read_samples
from tests.support.slack import SlackReceiver
from tests.support.waiting import wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.postgres

Cli = Callable[..., subprocess.CompletedProcess[str]]

FAILURE_TITLE = ":red_circle: Backup of {} failed"


def alerts_titled(slack: SlackReceiver, title: str) -> list[dict[str, Any]]:
    return [a for a in slack.attachments() if a.get("title") == title]


def field(alert: dict[str, Any], name: str) -> str:
    values = [f["value"] for f in alert.get("fields", []) if f.get("title") == name]
    assert len(values) == 1, f"field {name!r} missing in {alert}"
    return str(values[0])


def metric(gateway: str, name: str, instance: str, database: str) -> float | None:
    return read_samples(gateway, name, instance=instance, database=database).get("")


def snapshot_files(directory: Path) -> dict[str, bytes]:
    """Every regular file of ``daily/`` and its bytes."""
    daily = directory / "daily"
    return {
        name: (daily / name).read_bytes()
        for name in file_names(daily)
        if not (daily / name).is_symlink()
    }


def assert_clean_failure(
    *,
    result: subprocess.CompletedProcess[str],
    database: str,
    step: str,
    stderr_text: str,
    slack: SlackReceiver,
    backup_dir: Path,
    before: dict[str, bytes],
    gateway: str,
    instance: str,
    last_success: float | None,
) -> None:
    assert result.returncode == 1, result.stdout + result.stderr

    # The command flushes its alerts before it exits, so no waiting is needed.
    failures = alerts_titled(slack, FAILURE_TITLE.format(database))
    assert len(failures) == 1
    assert field(failures[0], "database") == database
    assert field(failures[0], "step") == step
    assert stderr_text in field(failures[0], "stderr")

    assert snapshot_files(backup_dir) == before
    assert not [n for n in file_names(backup_dir) if n.endswith(".partial")]

    success_time = metric(
        gateway, "backup_last_success_timestamp_seconds", instance, database
    )
    assert success_time == last_success
    assert metric(gateway, "backup_last_status", instance, database) == 0.0
    assert metric(gateway, "backup_failures_total", instance, database) == 1.0


def first_backup(
    backup_cli: Cli, database: str, gateway: str, instance: str, **env: str
) -> float:
    result = backup_cli("backup", "now", BACKUP_DATABASES=database, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    value = metric(gateway, "backup_last_success_timestamp_seconds", instance, database)
    assert value is not None and value > 0
    return value


def test_missing_database_fails_cleanly(
    pg: Postgres,
    backup_cli: Cli,
    backup_dir: Path,
    slack: SlackReceiver,
    pushgateway_url: str,
    prefix: str,
) -> None:
    database = pg.create_database("gone")
    pg.psql(database, "CREATE TABLE t AS SELECT generate_series(1, 10) AS id")
    last = first_backup(backup_cli, database, pushgateway_url, prefix)
    before = snapshot_files(backup_dir)
    assert len(before) == 1
    pg.psql("postgres", f'DROP DATABASE "{database}"')

    result = backup_cli("backup", "now", BACKUP_DATABASES=database)
    assert_clean_failure(
        result=result,
        database=database,
        step="connect",
        stderr_text=f'database "{database}" does not exist',
        slack=slack,
        backup_dir=backup_dir,
        before=before,
        gateway=pushgateway_url,
        instance=prefix,
        last_success=last,
    )


def test_closed_port_fails_cleanly(
    pg: Postgres,
    backup_cli: Cli,
    backup_dir: Path,
    slack: SlackReceiver,
    pushgateway_url: str,
    prefix: str,
) -> None:
    database = pg.create_database("down")
    last = first_backup(backup_cli, database, pushgateway_url, prefix)
    before = snapshot_files(backup_dir)

    # A closed port fails like a stopped server, without stopping the shared one.
    result = backup_cli(
        "backup", "now", BACKUP_DATABASES=database, PGPORT=str(free_port())
    )
    assert_clean_failure(
        result=result,
        database=database,
        step="connect",
        stderr_text="Connection refused",
        slack=slack,
        backup_dir=backup_dir,
        before=before,
        gateway=pushgateway_url,
        instance=prefix,
        last_success=last,
    )


@pytest.mark.slow
def test_wrong_password_fails_cleanly(
    auth_cluster: AuthCluster,
    backup_cli: Cli,
    backup_dir: Path,
    slack: SlackReceiver,
    pushgateway_url: str,
    prefix: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    role, database = f"bk_role_{suffix}", f"bk_auth_{suffix}"
    auth_cluster.psql(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password-{suffix}'")
    auth_cluster.psql(f"CREATE DATABASE {database} OWNER {role}")
    server = {"PGHOST": "127.0.0.1", "PGPORT": str(auth_cluster.port), "PGUSER": role}
    try:
        last = first_backup(
            backup_cli,
            database,
            pushgateway_url,
            prefix,
            PGPASSWORD=f"right-password-{suffix}",
            **server,
        )
        before = snapshot_files(backup_dir)

        result = backup_cli(
            "backup",
            "now",
            BACKUP_DATABASES=database,
            PGPASSWORD=f"wrong-password-{suffix}",
            **server,
        )
        assert_clean_failure(
            result=result,
            database=database,
            step="connect",
            stderr_text=f'password authentication failed for user "{role}"',
            slack=slack,
            backup_dir=backup_dir,
            before=before,
            gateway=pushgateway_url,
            instance=prefix,
            last_success=last,
        )
        assert f"wrong-password-{suffix}" not in result.stdout
        log = (backup_dir / "backup.log").read_text()
        assert f"wrong-password-{suffix}" not in log
        assert f"right-password-{suffix}" not in log
    finally:
        auth_cluster.psql(f"DROP DATABASE IF EXISTS {database}")
        auth_cluster.psql(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount a tmpfs of a given size in bytes; unmount it at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={size},mode=0700",
                "tmpfs",
                str(point),
            ],
            check=True,
        )
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_free_space_checked_before_dump(
    pg: Postgres,
    backup_cli: Cli,
    slack: SlackReceiver,
    small_mount: Callable[[int], Path],
) -> None:
    database = pg.create_database("space")
    size = int(pg.psql(database, "SELECT pg_database_size(current_database())"))
    directory = small_mount(size // 4)

    result = backup_cli(
        "backup", "now", BACKUP_DATABASES=database, BACKUP_DIR=str(directory)
    )
    assert result.returncode == 1
    failures = alerts_titled(slack, FAILURE_TITLE.format(database))
    assert len(failures) == 1
    assert field(failures[0], "step") == "space_check"
    assert f"is {size} bytes (pg_database_size)" in failures[0]["text"]
    assert file_names(directory / "daily") == set()


@pytest.mark.slow
def test_disk_full_during_dump_fails_cleanly(
    pg: Postgres,
    backup_cli: Cli,
    slack: SlackReceiver,
    small_mount: Callable[[int], Path],
) -> None:
    database = pg.create_database("full")
    # 16,000 rows of 1 KiB random bytes: stored raw, but dumped as hex text
    # at twice the size, so the dump outgrows a volume that fits the database.
    pg.psql(
        database,
        "CREATE TABLE blob AS SELECT g AS id, (SELECT string_agg(decode(md5("
        "random()::text || g || i), 'hex'), ''::bytea) FROM generate_series(1, 64) i)"
        " AS payload FROM generate_series(1, 16000) g",
    )
    size = int(pg.psql(database, "SELECT pg_database_size(current_database())"))
    directory = small_mount(size + 1024 * 1024)

    result = backup_cli(
        "backup",
        "now",
        BACKUP_DATABASES=database,
        BACKUP_DIR=str(directory),
        BACKUP_COMPRESSION_LEVEL="0",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    failures = alerts_titled(slack, FAILURE_TITLE.format(database))
    assert len(failures) == 1
    assert field(failures[0], "step") == "pg_dump"
    assert "No space left on device" in field(failures[0], "stderr")
    assert file_names(directory / "daily") == set()


class TableLock:
    """Hold ACCESS EXCLUSIVE on a table in an open transaction, so pg_dump waits."""

    def __init__(self, pg: Postgres, database: str, table: str) -> None:
        self.process = subprocess.Popen(
            [
                "psql",
                "--no-psqlrc",
                "-h",
                pg.host,
                "-p",
                str(pg.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-Atq",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(
            f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n"
        )
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("ROLLBACK;\n")
            self.process.stdin.close()
            self.process.wait(timeout=30)


def _sessions(pg: Postgres, database: str) -> list[str]:
    """Return the wait event type of each backup session on ``database``."""
    rows = pg.psql(
        "postgres",
        "SELECT datname || '|' || coalesce(wait_event_type, '') FROM pg_stat_activity"
        " WHERE application_name = 'molochain-backup'",
    )
    found = [line.split("|", 1) for line in rows.splitlines() if line]
    return [wait for name, wait in found if name == database]


def waiting_dumps(pg: Postgres, database: str) -> int:
    return _sessions(pg, database).count("Lock")


def dump_sessions(pg: Postgres, database: str) -> int:
    return len(_sessions(pg, database))


@pytest.fixture
def locked_database(pg: Postgres) -> Iterator[tuple[str, TableLock]]:
    database = pg.create_database("locked")
    pg.psql(database, "CREATE TABLE t AS SELECT generate_series(1, 100) AS id")
    lock = TableLock(pg, database, "t")
    yield database, lock
    lock.release()


def test_killed_worker_leaves_no_partial(
    pg: Postgres,
    backup_env: dict[str, str],
    backup_cli: Cli,
    backup_dir: Path,
    locked_database: tuple[str, TableLock],
) -> None:
    database, lock = locked_database
    worker = WorkerProcess(
        ["backup", "now"], {**backup_env, "BACKUP_DATABASES": database}
    )
    worker.start()
    try:
        partial = wait_for_file(backup_dir / "daily", ".*.partial")
        wait_for(
            lambda: waiting_dumps(pg, database) == 1, what="pg_dump to wait on the lock"
        )
    finally:
        worker.kill()
    assert worker.process is not None and worker.process.returncode == -signal.SIGKILL

    # pg_dump gets SIGTERM when the worker dies, instead of finishing later.
    wait_for(lambda: dump_sessions(pg, database) == 0, what="pg_dump to end")
    lock.release()
    assert partial.exists()

    result = backup_cli("backup", "now", BACKUP_DATABASES=database)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f'"event": "partial_removed", "path": "{partial}"' in result.stdout
    assert not partial.exists()
    names = file_names(backup_dir / "daily")
    assert not [n for n in names if n.endswith(".partial")]
    dumps = [n for n in names if n.endswith(".dump")]
    assert len(dumps) == 1

    listing = backup_cli("backup", "list")
    rows = listing.stdout.splitlines()[1:]
    assert len(rows) == 1
    assert rows[0].split()[0] == database


def test_second_run_skipped_while_first_runs(
    pg: Postgres,
    backup_env: dict[str, str],
    backup_cli: Cli,
    backup_dir: Path,
    locked_database: tuple[str, TableLock],
) -> None:
    database, lock = locked_database
    first = WorkerProcess(
        ["backup", "now"], {**backup_env, "BACKUP_DATABASES": database}
    )
    first.start()
    try:
        wait_for(
            lambda: waiting_dumps(pg, database) == 1, what="pg_dump to wait on the lock"
        )
        partial = wait_for_file(backup_dir / "daily", ".*.partial")

        second = backup_cli("backup", "now", BACKUP_DATABASES=database)
        assert second.returncode == 1
        assert '"event": "run_skipped"' in second.stdout
        assert (
            '"level": "WARNING"'
            in second.stdout.split('"event": "run_skipped"')[0].splitlines()[-1]
        )
        assert partial.exists()

        lock.release()
        assert first.process is not None
        assert first.process.wait(timeout=60) == 0
    finally:
        first.kill()
    assert len(first.events("backup_succeeded")) == 1
    dumps = [n for n in file_names(backup_dir / "daily") if n.endswith(".dump")]
    assert len(dumps) == 1


def status_entries(backup_dir: Path) -> dict[str, Any]:
    path = backup_dir / "status.json"
    if not path.exists():
        return {}
    entries: dict[str, Any] = json.loads(path.read_text())["databases"]
    return entries


def test_mistyped_database_not_recorded(
    pg: Postgres,
    backup_cli: Cli,
    backup_dir: Path,
    slack: SlackReceiver,
    pushgateway_url: str,
    prefix: str,
) -> None:
    real = pg.create_database("typo")
    typo = f"{real}_nope"

    result = backup_cli("backup", "now", "--database", real, "--database", typo)
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"recorded": false' in result.stdout
    assert f"database {typo!r} does not exist" in result.stdout

    entries = status_entries(backup_dir)
    assert set(entries) == {real}
    assert alerts_titled(slack, FAILURE_TITLE.format(typo)) == []
    assert metric(pushgateway_url, "backup_last_status", prefix, typo) is None
    assert metric(pushgateway_url, "backup_last_status", prefix, real) == 1.0


def test_configured_missing_database_recorded(
    pg: Postgres, backup_cli: Cli, backup_dir: Path, slack: SlackReceiver
) -> None:
    missing = f"{pg.create_database('conf')}_nope"
    result = backup_cli(
        "backup", "now", "--database", missing, BACKUP_DATABASES=missing
    )
    assert result.returncode == 1
    assert status_entries(backup_dir)[missing]["last_status"] == 0
    assert len(alerts_titled(slack, FAILURE_TITLE.format(missing))) == 1


def test_forget_removes_status_entries(backup_cli: Cli, backup_dir: Path) -> None:
    backup_dir.mkdir()
    entry = {"last_status": 0, "failures_total": 1}
    status = {"version": 1, "databases": {"shop": entry, "nope": entry}}
    (backup_dir / "status.json").write_text(json.dumps(status))

    result = backup_cli("backup", "forget", "nope", "never")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith("forgot nope;")
    assert result.stdout.splitlines()[1] == f"never: not in {backup_dir}/status.json"
    assert set(status_entries(backup_dir)) == {"shop"}

    again = backup_cli("backup", "forget", "shop")
    assert again.returncode == 0
    assert status_entries(backup_dir) == {}


def test_forget_waits_for_running_backup(backup_cli: Cli, backup_dir: Path) -> None:
    backup_dir.mkdir()
    status = {"version": 1, "databases": {"nope": {"last_status": 0}}}
    (backup_dir / "status.json").write_text(json.dumps(status))
    lock = RunLock(backup_dir / ".lock")
    assert lock.acquire()
    try:
        result = backup_cli("backup", "forget", "nope")
    finally:
        lock.release()
    assert result.returncode == 1
    assert "a backup run is in progress" in result.stderr
    assert set(status_entries(backup_dir)) == {"nope"}
