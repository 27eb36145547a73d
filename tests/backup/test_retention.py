"""Retention and snapshot rules over many days, with the clock injected."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from handlers.backup import retention
from handlers.backup.job import BackupJob
from handlers.backup.layout import Kind, Layout
from handlers.backup.settings import BackupSettings
from reactor.config import load
from tests.backup.conftest import SUPERUSER, TEST_PASSWORD, Postgres
from tests.support.worker import run_once

DB = "app"
POLICY = retention.Policy(daily_days=30, weekly_weeks=8, monthly_months=2, keep_min=3)


def make_backup(layout: Layout, database: str, moment: datetime) -> Path:
    """Write a daily file, with weekly and monthly links as the worker makes them."""
    directory = layout.ensure_dir(layout.directory(Kind.DAILY, database))
    path = directory / layout.file_name(database, moment, "dump")
    path.write_bytes(b"PGDMP")
    if moment.weekday() == 6:
        os.link(
            path, layout.ensure_dir(layout.directory(Kind.WEEKLY, database)) / path.name
        )
    if moment.day == 1:
        os.link(
            path,
            layout.ensure_dir(layout.directory(Kind.MONTHLY, database)) / path.name,
        )
    return path


def at(day: date, hour: int = 2) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def kept(layout: Layout, kind: Kind, database: str = DB) -> list[str]:
    return [item.time.date().isoformat() for item in layout.files(kind, database)]


def prune(layout: Layout, now: datetime, database: str | None = DB) -> list[str]:
    deletions = retention.plan(layout, POLICY, now, database)
    retention.apply(layout, deletions)
    return [d.file.path.name for d in deletions]


def test_retention_boundaries_exact(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for day in days(date(2025, 1, 1), date(2025, 4, 30)):
        make_backup(layout, DB, at(day))

    prune(layout, at(date(2025, 4, 30)))

    # Exactly 30 days old is kept; 30 days and one day is deleted.
    assert kept(layout, Kind.DAILY)[0] == "2025-03-31"
    assert kept(layout, Kind.DAILY)[-1] == "2025-04-30"
    assert len(kept(layout, Kind.DAILY)) == 31
    # Eight weeks back from 30 April is 5 March: the Sunday 2 March goes.
    assert kept(layout, Kind.WEEKLY) == [
        "2025-03-09",
        "2025-03-16",
        "2025-03-23",
        "2025-03-30",
        "2025-04-06",
        "2025-04-13",
        "2025-04-20",
        "2025-04-27",
    ]
    # Two months back from 30 April is 28 February (clamped): 1 March stays.
    assert kept(layout, Kind.MONTHLY) == ["2025-03-01", "2025-04-01"]


def test_snapshot_survives_daily_deletion(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for day in days(date(2025, 1, 1), date(2025, 3, 10)):
        make_backup(layout, DB, at(day))
    prune(layout, at(date(2025, 3, 10)))

    # Two months back from 10 March is 10 January: 1 January goes.
    monthly = layout.files(Kind.MONTHLY, DB)
    assert [m.time.date() for m in monthly] == [date(2025, 2, 1), date(2025, 3, 1)]
    # The daily link of 1 February is past 30 days and gone; the monthly
    # link still contains the data.
    assert kept(layout, Kind.DAILY)[0] == "2025-02-08"
    assert monthly[0].path.read_bytes() == b"PGDMP"
    assert monthly[0].path.stat().st_nlink == 1


def test_keep_min_after_failures(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for day in days(date(2025, 1, 2), date(2025, 1, 11)):
        make_backup(layout, DB, at(day))

    # Fifty-one days of failed runs later, every file is past every limit.
    deleted = prune(layout, at(date(2025, 3, 3)))

    assert kept(layout, Kind.DAILY) == ["2025-01-09", "2025-01-10", "2025-01-11"]
    assert kept(layout, Kind.WEEKLY) == []
    assert len(deleted) == 7 + 1  # seven dailies and the weekly 5 January


def test_keep_min_counts_snapshots(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    make_backup(layout, DB, at(date(2025, 1, 1)))  # daily and monthly
    make_backup(layout, DB, at(date(2025, 1, 3)))
    policy = retention.Policy(
        daily_days=1, weekly_weeks=1, monthly_months=12, keep_min=2
    )

    retention.apply(layout, retention.plan(layout, policy, at(date(2025, 3, 1)), DB))

    # Two backups remain: the monthly 1 January, and 3 January kept by keep_min.
    assert kept(layout, Kind.DAILY) == ["2025-01-01", "2025-01-03"]
    assert kept(layout, Kind.MONTHLY) == ["2025-01-01"]


def test_foreign_files_untouched(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for day in days(date(2025, 1, 1), date(2025, 2, 28)):
        make_backup(layout, DB, at(day))
        make_backup(layout, "other", at(day))
    directory = layout.directory(Kind.DAILY, DB)
    foreign = [
        directory / "notes.txt",
        directory / "other_20250101T020000Z.dump",
        directory / f"{DB}_20250101T020000Z.dump.bak",
        directory / f"{DB}_2025-01-01.dump",
        tmp_path / "daily" / f"{DB}_20250101T020000Z.dump",
    ]
    for path in foreign:
        path.write_text("not a backup of this worker")

    prune(layout, at(date(2025, 2, 28)), database=DB)

    for path in foreign:
        assert path.read_text() == "not a backup of this worker"
    assert len(kept(layout, Kind.DAILY, "other")) == 59
    assert len(kept(layout, Kind.DAILY, DB)) == 31


def test_zero_monthly_retention_disables_snapshots(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for day in days(date(2024, 1, 1), date(2024, 12, 31)):
        make_backup(layout, DB, at(day))
    policy = retention.Policy(
        daily_days=30, weekly_weeks=8, monthly_months=0, keep_min=3
    )
    assert not policy.enabled(Kind.MONTHLY)

    retention.apply(layout, retention.plan(layout, policy, at(date(2024, 12, 31)), DB))

    assert len(kept(layout, Kind.MONTHLY)) == 12


def test_dry_run_lists_without_deleting(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    old = make_backup(layout, DB, datetime(2020, 1, 7, 2, tzinfo=UTC))
    for day in days(date(2020, 1, 8), date(2020, 1, 10)):
        make_backup(layout, DB, at(day))

    env = {"PGPASSWORD": TEST_PASSWORD, "BACKUP_DIR": str(tmp_path)}
    result = run_once(["backup", "prune", "--dry-run"], env)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"would delete {old}: daily backup older than 30 days")
    assert old.exists()


@pytest.mark.postgres
def test_job_snapshots_in_local_time(pg: Postgres, tmp_path: Path) -> None:
    database = pg.create_database("snap")
    pg.psql(database, "CREATE TABLE t AS SELECT generate_series(1, 5) AS id")
    settings = load(
        BackupSettings,
        {
            "PGHOST": pg.host,
            "PGPORT": str(pg.port),
            "PGUSER": SUPERUSER,
            "PGPASSWORD": TEST_PASSWORD,
            "BACKUP_DIR": str(tmp_path),
            "BACKUP_DATABASES": database,
            "BACKUP_GLOBALS": "false",
            "TZ": "Europe/Berlin",
            "BACKUP_RETENTION_DAYS": "2",
            "BACKUP_KEEP_MIN": "1",
        },
    )
    berlin = ZoneInfo("Europe/Berlin")
    clock_value = [datetime(2025, 5, 29, 0, 30, tzinfo=berlin)]
    job = BackupJob(settings, clock=lambda: clock_value[0])
    layout = job.layout

    for day in days(date(2025, 5, 29), date(2025, 6, 3)):
        # 00:30 in Berlin is the previous day in UTC: Sunday 1 June 2025
        # locally is Saturday 31 May at 22:30 UTC.
        clock_value[0] = datetime(day.year, day.month, day.day, 0, 30, tzinfo=berlin)
        report = asyncio.run(job.run())
        assert report.succeeded

    sunday = datetime(2025, 5, 31, 22, 30, tzinfo=UTC)
    assert [f.time for f in layout.files(Kind.WEEKLY, database)] == [sunday]
    assert [f.time for f in layout.files(Kind.MONTHLY, database)] == [sunday]
    # Retention keeps dailies no older than two days from the last run.
    assert [f.time.date() for f in layout.files(Kind.DAILY, database)] == [
        date(2025, 5, 31),
        date(2025, 6, 1),
        date(2025, 6, 2),
    ]
    weekly = layout.files(Kind.WEEKLY, database)[0].path
    monthly = layout.files(Kind.MONTHLY, database)[0].path
    assert weekly.stat().st_ino == monthly.stat().st_ino
    latest = layout.directory(Kind.DAILY, database) / "latest"
    assert latest.resolve() == layout.files(Kind.DAILY, database)[-1].path
