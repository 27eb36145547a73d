"""Symbolic links planted in BACKUP_DIR: never followed to write, chmod or delete."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handlers.backup import retention
from handlers.backup.errors import SymlinkError
from handlers.backup.job import RunLock
from handlers.backup.layout import Kind, Layout
from tests.backup.conftest import Postgres
from tests.support.slack import SlackReceiver

Cli = Callable[..., subprocess.CompletedProcess[str]]

DB = "app"
OLD_DUMP = f"{DB}_20200101T000000Z.dump"
NOW = datetime(2025, 6, 1, 2, tzinfo=UTC)
POLICY = retention.Policy(daily_days=1, weekly_weeks=1, monthly_months=1, keep_min=1)


def outside_dir(tmp_path: Path, name: str = OLD_DUMP) -> Path:
    """Make a 0755 folder outside BACKUP_DIR with an old backup and a partial file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o755)
    (outside / name).write_text("precious old file")
    (outside / ".notes.partial").write_text("someone's temporary file")
    return outside


def contents(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in directory.iterdir()}


@pytest.mark.parametrize(
    "link", [f"daily/{DB}", "daily"], ids=["database_dir", "kind_dir"]
)
def test_ensure_dir_rejects_symlinked_dir(tmp_path: Path, link: str) -> None:
    outside = outside_dir(tmp_path)
    layout = Layout(tmp_path / "backups")
    (layout.root / link).parent.mkdir(parents=True, exist_ok=True)
    (layout.root / link).symlink_to(outside)
    before = contents(outside)

    with pytest.raises(SymlinkError) as raised:
        layout.ensure_dir(layout.directory(Kind.DAILY, DB))

    assert raised.value.path == str(layout.root / link)
    assert f"{layout.root / link} is a symbolic link" in raised.value.message
    assert "move the link away" in raised.value.message
    assert outside.stat().st_mode & 0o777 == 0o755
    assert contents(outside) == before


def test_ensure_dir_still_tightens_real_dirs(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "backups")
    daily = layout.root / "daily"
    daily.mkdir(parents=True)
    daily.chmod(0o755)

    directory = layout.ensure_dir(layout.directory(Kind.DAILY, DB))

    assert directory.is_dir()
    assert directory.stat().st_mode & 0o777 == 0o700
    assert daily.stat().st_mode & 0o777 == 0o700
    assert layout.root.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "link",
    [f"daily/{DB}", "daily", f"weekly/{DB}", "monthly"],
    ids=["daily_database_dir", "daily", "weekly_database_dir", "monthly"],
)
def test_listing_skips_symlinked_dir(
    tmp_path: Path, link: str, caplog: pytest.LogCaptureFixture
) -> None:
    outside = outside_dir(tmp_path)
    layout = Layout(tmp_path / "backups")
    (layout.root / link).parent.mkdir(parents=True, exist_ok=True)
    (layout.root / link).symlink_to(outside if "/" in link else tmp_path)
    if "/" not in link:
        # The kind directory links to a folder that contains a database folder.
        (tmp_path / DB).symlink_to(outside)
    before = contents(outside)

    for kind in Kind:
        assert layout.files(kind, DB) == []
        assert layout.files(kind) == []
    assert layout.databases() == []
    assert retention.plan(layout, POLICY, NOW, DB) == []
    assert retention.plan(layout, POLICY, NOW) == []
    assert layout.remove_partials() == []

    assert contents(outside) == before
    skipped = [
        r for r in caplog.records if getattr(r, "event", "") == "symlink_skipped"
    ]
    assert skipped
    assert {getattr(r, "path", "") for r in skipped} == {str(layout.root / link)}


def test_symlinked_files_never_backups(tmp_path: Path) -> None:
    outside = outside_dir(tmp_path, "globals_20200101T000000Z.sql")
    (outside / OLD_DUMP).write_text("precious old file")
    layout = Layout(tmp_path / "backups")
    daily = layout.ensure_dir(layout.directory(Kind.DAILY, DB))
    globals_dir = layout.ensure_dir(layout.globals_dir)
    (daily / OLD_DUMP).symlink_to(outside / OLD_DUMP)
    (globals_dir / "globals_20200101T000000Z.sql").symlink_to(
        outside / "globals_20200101T000000Z.sql"
    )

    assert layout.files(Kind.DAILY, DB) == []
    assert layout.globals_files() == []
    assert retention.plan(layout, POLICY, NOW) == []
    assert (daily / OLD_DUMP).is_symlink()
    assert (globals_dir / "globals_20200101T000000Z.sql").is_symlink()
    assert (outside / OLD_DUMP).read_text() == "precious old file"


def test_remove_file_rejects_symlinked_dir(tmp_path: Path) -> None:
    outside = outside_dir(tmp_path)
    layout = Layout(tmp_path / "backups")
    layout.ensure_dir(layout.root / "daily")
    (layout.root / "daily" / DB).symlink_to(outside)

    with pytest.raises(SymlinkError):
        layout.remove_file(layout.directory(Kind.DAILY, DB) / OLD_DUMP)

    assert (outside / OLD_DUMP).exists()


def test_partial_link_removed_not_followed(tmp_path: Path) -> None:
    outside = outside_dir(tmp_path)
    layout = Layout(tmp_path / "backups")
    daily = layout.ensure_dir(layout.directory(Kind.DAILY, DB))
    (daily / ".latest.123.partial").symlink_to(outside / ".notes.partial")

    removed = layout.remove_partials()

    assert removed == [daily / ".latest.123.partial"]
    assert not (daily / ".latest.123.partial").is_symlink()
    assert (outside / ".notes.partial").exists()


def test_lock_symlink_rejected(tmp_path: Path) -> None:
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    target = tmp_path / "lock-created"
    (backup_dir / ".lock").symlink_to(target)

    with pytest.raises(SymlinkError) as raised:
        RunLock(backup_dir / ".lock").acquire()

    assert f"{backup_dir / '.lock'} is a symbolic link" in raised.value.message
    assert not target.exists()


def failure_alerts(slack: SlackReceiver, subject: str) -> list[dict[str, object]]:
    title = f":red_circle: Backup of {subject} failed"
    return [a for a in slack.attachments() if a.get("title") == title]


def step_of(alert: dict[str, object]) -> str:
    fields = alert.get("fields")
    assert isinstance(fields, list)
    steps = [f["value"] for f in fields if f.get("title") == "step"]
    assert len(steps) == 1
    return str(steps[0])


@pytest.mark.postgres
def test_symlinked_database_dir_fails_cleanly(
    pg: Postgres,
    backup_cli: Cli,
    backup_dir: Path,
    slack: SlackReceiver,
    tmp_path: Path,
) -> None:
    database = pg.create_database("link")
    outside = outside_dir(tmp_path, f"{database}_20200101T000000Z.dump")
    before = contents(outside)
    (backup_dir / "daily").mkdir(parents=True)
    (backup_dir / "daily" / database).symlink_to(outside)

    result = backup_cli(
        "backup",
        "now",
        "--database",
        database,
        BACKUP_RETENTION_DAYS="1",
        BACKUP_KEEP_MIN="1",
        BACKUP_WEEKLY_RETENTION="0",
        BACKUP_MONTHLY_RETENTION="0",
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    failed = [
        json.loads(line)
        for line in result.stdout.splitlines()
        if '"event": "backup_failed"' in line
    ]
    assert len(failed) == 1
    assert failed[0]["step"] == "directory_check"
    assert f"{backup_dir / 'daily' / database} is a symbolic link" in failed[0]["error"]
    alerts = failure_alerts(slack, database)
    assert len(alerts) == 1
    assert step_of(alerts[0]) == "directory_check"

    assert contents(outside) == before
    assert outside.stat().st_mode & 0o777 == 0o755
    assert (backup_dir / "daily" / database).is_symlink()


@pytest.mark.postgres
def test_symlinked_lock_fails_run(
    pg: Postgres,
    backup_cli: Cli,
    backup_dir: Path,
    slack: SlackReceiver,
    tmp_path: Path,
) -> None:
    database = pg.create_database("lock")
    backup_dir.mkdir()
    target = tmp_path / "lock-created"
    (backup_dir / ".lock").symlink_to(target)

    result = backup_cli("backup", "now", "--database", database)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{backup_dir / '.lock'} is a symbolic link" in result.stdout
    assert len(failure_alerts(slack, "(all databases)")) == 1
    assert not target.exists()
    assert not (backup_dir / "daily").exists()


def test_forget_rejects_symlinked_lock(backup_cli: Cli, backup_dir: Path) -> None:
    backup_dir.mkdir()
    status = {"version": 1, "databases": {"nope": {"last_status": 0}}}
    (backup_dir / "status.json").write_text(json.dumps(status))
    target = backup_dir.parent / "lock-created"
    (backup_dir / ".lock").symlink_to(target)

    result = backup_cli("backup", "forget", "nope")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{backup_dir / '.lock'} is a symbolic link" in result.stderr
    assert not target.exists()
    assert "nope" in json.loads((backup_dir / "status.json").read_text())["databases"]
