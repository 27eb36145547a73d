"""The cron schedule, missed runs, stopping, the healthcheck and invalid settings."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from handlers.backup.schedule import (
    LocalCronTrigger,
    find_missed,
    just_after,
    previous_fire_time,
)
from tests.backup.conftest import TEST_PASSWORD, Postgres, file_names
from tests.backup.test_failures import TableLock, waiting_dumps
from tests.support.slack import SlackReceiver
from tests.support.waiting import wait_for
from tests.support.worker import WorkerProcess, run_once

Cli = Callable[..., subprocess.CompletedProcess[str]]
BERLIN = ZoneInfo("Europe/Berlin")


def local_days(expression: str, first: datetime, last: datetime) -> Counter[date]:
    trigger = LocalCronTrigger.from_crontab(expression, timezone=BERLIN)
    fired: Counter[date] = Counter()
    previous = None
    moment = first
    while True:
        fire_time = trigger.get_next_fire_time(previous, moment)
        if fire_time is None or fire_time > last:
            return fired
        fired[fire_time.astimezone(BERLIN).date()] += 1
        previous = fire_time
        moment = just_after(fire_time)


@pytest.mark.parametrize("expression", ["0 2 * * *", "30 2 * * *", "0 3 * * *"])
@pytest.mark.parametrize(
    ("first", "last"),
    [(date(2025, 3, 25), date(2025, 4, 5)), (date(2025, 10, 20), date(2025, 11, 2))],
)
def test_daily_schedule_once_per_local_day(
    expression: str, first: date, last: date
) -> None:
    start = datetime(first.year, first.month, first.day, tzinfo=BERLIN)
    end = datetime(last.year, last.month, last.day, 23, 59, tzinfo=BERLIN)
    fired = local_days(expression, start, end)
    expected_days = (last - first).days + 1
    assert sorted(fired) == [first + timedelta(days=n) for n in range(expected_days)]
    assert set(fired.values()) == {1}


def test_spring_forward_fires_after_gap() -> None:
    trigger = LocalCronTrigger.from_crontab("30 2 * * *", timezone=BERLIN)
    fire_time = trigger.get_next_fire_time(None, datetime(2025, 3, 30, tzinfo=BERLIN))
    # 02:30 does not exist on 30 March 2025 in Berlin; it runs at 03:30 CEST.
    assert fire_time is not None
    assert fire_time.astimezone(UTC) == datetime(2025, 3, 30, 1, 30, tzinfo=UTC)


def test_hourly_schedule_keeps_both_fall_back_hours() -> None:
    trigger = LocalCronTrigger.from_crontab("15 * * * *", timezone=BERLIN)
    start = datetime(2025, 10, 26, 0, 0, tzinfo=UTC)
    times = []
    previous = None
    moment = start
    for _ in range(4):
        fire_time = trigger.get_next_fire_time(previous, moment)
        assert fire_time is not None
        times.append(fire_time.astimezone(UTC).hour)
        previous, moment = fire_time, just_after(fire_time)
    # 02:15 CEST (00:15 UTC) and 02:15 CET (01:15 UTC) are different instants,
    # but the second has the same wall clock time and is skipped.
    assert times == [0, 2, 3, 4]


FRIDAY = datetime(2026, 12, 4, tzinfo=UTC)


def next_fire_days(expression: str, count: int) -> list[date]:
    trigger = LocalCronTrigger.from_crontab(expression, timezone=UTC)
    days = []
    previous = None
    moment = FRIDAY
    for _ in range(count):
        fire_time = trigger.get_next_fire_time(previous, moment)
        assert fire_time is not None
        days.append(fire_time.date())
        previous, moment = fire_time, just_after(fire_time)
    return days


def december(*days: int) -> list[date]:
    return [date(2026, 12, day) for day in days]


# From Friday 4 December 2026: Saturday is the 5th, Sunday the 6th, Monday the 7th.
@pytest.mark.parametrize(
    ("day_of_week", "expected"),
    [
        ("0", december(6, 13, 20, 27)),
        ("7", december(6, 13, 20, 27)),
        ("sun", december(6, 13, 20, 27)),
        ("1", december(7, 14, 21, 28)),
        ("6", december(5, 12, 19, 26)),
        ("1-5", december(4, 7, 8, 9, 10, 11)),
        ("mon-fri", december(4, 7, 8, 9, 10, 11)),
        ("0,6", december(5, 6, 12, 13)),
        ("6-7", december(5, 6, 12, 13)),
        ("sat,sun", december(5, 6, 12, 13)),
        ("*/2", december(5, 6, 8, 10, 12, 13)),
        ("1-5/2", december(4, 7, 9, 11, 14)),
        ("3/2", december(4, 6, 9, 11, 13)),
        ("sun-sat", december(4, 5, 6, 7, 8)),
        ("*", december(4, 5, 6, 7, 8)),
    ],
)
def test_day_of_week_uses_cron_numbers(day_of_week: str, expected: list[date]) -> None:
    days = next_fire_days(f"0 2 * * {day_of_week}", len(expected))
    assert days == expected


@pytest.mark.parametrize("day_of_week", ["8", "fri-mon", "5-1", "1-5/0", "mon#1"])
def test_day_of_week_rejects_invalid(day_of_week: str) -> None:
    with pytest.raises(ValueError, match="day of week"):
        LocalCronTrigger.from_crontab(f"0 2 * * {day_of_week}")


def test_missed_run_within_grace_catches_up() -> None:
    trigger = LocalCronTrigger.from_crontab("0 2 * * *", timezone=BERLIN)
    last_fire = datetime(2025, 6, 1, 2, 0, tzinfo=BERLIN)
    now = datetime(2025, 6, 3, 2, 40, tzinfo=BERLIN)
    missed = find_missed(trigger, last_fire, now, timedelta(hours=1))
    assert missed is not None
    assert missed.count == 2
    assert missed.latest == datetime(2025, 6, 3, 2, 0, tzinfo=BERLIN)
    assert missed.catch_up is True

    late = find_missed(trigger, last_fire, now + timedelta(hours=1), timedelta(hours=1))
    assert late is not None
    assert late.catch_up is False
    assert (
        find_missed(trigger, now, now + timedelta(hours=2), timedelta(hours=1)) is None
    )
    assert find_missed(trigger, None, now, timedelta(hours=1)) is None


def test_previous_fire_time_looks_back() -> None:
    trigger = LocalCronTrigger.from_crontab("0 2 1 * *", timezone=UTC)
    now = datetime(2025, 6, 20, tzinfo=UTC)
    assert previous_fire_time(trigger, now) == datetime(2025, 6, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BACKUP_SCHEDULE", "61 2 * * *", "BACKUP_SCHEDULE='61 2 * * *' is invalid"),
        ("BACKUP_SCHEDULE", "0 2 * *", "BACKUP_SCHEDULE='0 2 * *' is invalid"),
        ("BACKUP_SCHEDULE", "0 2 * * 8", "BACKUP_SCHEDULE='0 2 * * 8' is invalid"),
        ("BACKUP_COMPRESSION_LEVEL", "10", "BACKUP_COMPRESSION_LEVEL='10' is invalid"),
        ("BACKUP_FORMAT", "tar", "BACKUP_FORMAT='tar' is invalid"),
        ("TZ", "Mars/Olympus", "TZ='Mars/Olympus' is invalid"),
        ("BACKUP_KEEP_MIN", "0", "BACKUP_KEEP_MIN='0' is invalid"),
    ],
)
def test_bad_setting_exits_2(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    env = {"PGPASSWORD": TEST_PASSWORD, "BACKUP_DIR": str(tmp_path), variable: value}
    for args in (["backup-worker"], ["backup", "now"]):
        result = run_once(args, env, timeout=30)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"molochain-workers: error: {message}")
        assert result.stdout == ""


@pytest.mark.parametrize("args", [["backup", "now"], ["backup-worker"]])
def test_missing_password_exits_2(tmp_path: Path, args: list[str]) -> None:
    result = run_once(args, {"BACKUP_DIR": str(tmp_path)}, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "molochain-workers: error: PGPASSWORD: missing; set PGPASSWORD or "
        "PGPASSWORD_FILE to the password of PGUSER"
    )


def test_healthcheck_needs_no_password(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    write_schedule(tmp_path, now - timedelta(days=3), now - timedelta(hours=1))
    status = {
        "version": 1,
        "databases": {"shop": {"last_success_time": now.timestamp()}},
    }
    (tmp_path / "status.json").write_text(json.dumps(status))
    env = {
        "BACKUP_DIR": str(tmp_path),
        "BACKUP_DATABASES": "shop",
        "PGPASSWORD_FILE": str(tmp_path / "no-such-secret"),
    }
    result = run_once(["healthcheck", "backup-worker"], env, timeout=30)
    assert result.stderr == ""
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("healthy: oldest last success")


@pytest.mark.parametrize("args", [["backup", "now"], ["backup-worker"]])
def test_backup_dir_below_file_exits_2(tmp_path: Path, args: list[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {"PGPASSWORD": TEST_PASSWORD, "BACKUP_DIR": str(blocker / "backups")}
    result = run_once(args, env, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"molochain-workers: error: BACKUP_DIR='{blocker / 'backups'}' cannot be "
        "used as a directory: Not a directory"
    )
    assert result.stdout == ""


def test_healthcheck_reports_unreadable_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {"BACKUP_DIR": str(blocker / "backups")}
    result = run_once(["healthcheck", "backup-worker"], env, timeout=30)
    assert result.returncode == 1
    assert result.stderr == ""
    assert result.stdout.startswith("unhealthy: cannot read ")


def write_schedule(
    backup_dir: Path, first_start: datetime, last_fire: datetime
) -> None:
    backup_dir.mkdir(parents=True, exist_ok=True)
    (backup_dir / "schedule.json").write_text(
        json.dumps(
            {
                "version": 1,
                "first_start": first_start.isoformat(),
                "last_fire": last_fire.isoformat(),
            }
        )
    )


@pytest.mark.postgres
def test_worker_catches_up_then_stops_cleanly(
    pg: Postgres,
    backup_env: dict[str, str],
    backup_dir: Path,
    slack: SlackReceiver,
) -> None:
    database = pg.create_database("sched")
    pg.psql(database, "CREATE TABLE t AS SELECT generate_series(1, 10) AS id")
    now = datetime.now(UTC)
    write_schedule(backup_dir, now - timedelta(days=3), now - timedelta(days=2))
    env = {
        **backup_env,
        "BACKUP_DATABASES": database,
        "BACKUP_SCHEDULE": f"{(now - timedelta(minutes=20)).minute} * * * *",
    }

    worker = WorkerProcess(["backup-worker"], env).start()
    try:
        missed = worker.wait_event("run_missed")
        assert missed[0]["catch_up"] is True
        assert missed[0]["missed"] == 48
        worker.wait_event("backup_succeeded", timeout=60)
        next_runs = worker.wait_event("next_run", count=2)
        expected = datetime.fromisoformat(next_runs[0]["next_run_time"])
        assert expected > now
        assert expected - now <= timedelta(hours=1)
        wait_for(
            lambda: any(
                a.get("title") == ":warning: Scheduled backup missed"
                for a in slack.attachments()
            ),
            what="the missed-run alert",
        )
        assert worker.stop() == 0
    finally:
        worker.kill()
    assert len(worker.events("worker_stopped")) == 1

    healthy = run_once(["healthcheck", "backup-worker"], env)
    assert healthy.returncode == 0, healthy.stdout
    stale = run_once(
        ["healthcheck", "backup-worker"],
        {**env, "BACKUP_DATABASES": f"{database},never"},
    )
    assert stale.returncode == 1
    assert "never (last success never)" in stale.stdout


@pytest.mark.postgres
def test_worker_missed_beyond_grace_reports_error(
    pg: Postgres, backup_env: dict[str, str], backup_dir: Path, slack: SlackReceiver
) -> None:
    database = pg.create_database("late")
    now = datetime.now(UTC)
    due = now - timedelta(hours=2)
    write_schedule(backup_dir, now - timedelta(days=5), now - timedelta(days=1))
    env = {
        **backup_env,
        "BACKUP_DATABASES": database,
        "BACKUP_SCHEDULE": f"{due.minute} {due.hour} * * *",
        "BACKUP_MISFIRE_GRACE": "3600",
    }
    worker = WorkerProcess(["backup-worker"], env).start()
    try:
        missed = worker.wait_event("run_missed")
        assert missed[0]["catch_up"] is False
        assert missed[0]["missed"] == 1
        worker.wait_event("next_run")
        wait_for(
            lambda: any(
                a.get("title") == ":red_circle: Scheduled backup missed"
                for a in slack.attachments()
            ),
            what="the missed-run alert",
        )
        assert worker.stop() == 0
    finally:
        worker.kill()
    assert worker.events("backup_started") == []

    unhealthy = run_once(["healthcheck", "backup-worker"], env)
    assert unhealthy.returncode == 1
    assert "unhealthy" in unhealthy.stdout


@pytest.mark.postgres
def test_sigterm_abandons_dump_cleanly(
    pg: Postgres, backup_env: dict[str, str], backup_dir: Path, slack: SlackReceiver
) -> None:
    database = pg.create_database("term")
    pg.psql(database, "CREATE TABLE t AS SELECT generate_series(1, 10) AS id")
    lock = TableLock(pg, database, "t")
    now = datetime.now(UTC)
    write_schedule(backup_dir, now - timedelta(days=3), now - timedelta(hours=2))
    env = {
        **backup_env,
        "BACKUP_DATABASES": database,
        "BACKUP_SCHEDULE": f"{(now - timedelta(minutes=20)).minute} * * * *",
    }
    worker = WorkerProcess(["backup-worker"], env).start()
    try:
        worker.wait_event("dump_started", timeout=60)
        wait_for(lambda: waiting_dumps(pg, database) == 1, what="pg_dump to wait")
        assert worker.stop() == 0
    finally:
        worker.kill()
        lock.release()
    assert len(worker.events("backup_abandoned")) == 1
    assert worker.events("backup_failed") == []
    assert file_names(backup_dir / "daily") == set()


@pytest.mark.postgres
def test_worker_keeps_undelivered_alert(
    pg: Postgres, backup_env: dict[str, str], backup_dir: Path, slack: SlackReceiver
) -> None:
    database = pg.create_database("outbox")
    now = datetime.now(UTC)
    due = now - timedelta(hours=2)
    write_schedule(backup_dir, now - timedelta(days=5), now - timedelta(days=1))
    env = {
        **backup_env,
        "BACKUP_DATABASES": database,
        "BACKUP_SCHEDULE": f"{due.minute} {due.hour} * * *",
        "BACKUP_MISFIRE_GRACE": "3600",
        "SHUTDOWN_TIMEOUT": "1",
    }
    slack.respond_always(503)
    worker = WorkerProcess(["backup-worker"], env).start()
    try:
        worker.wait_event("alert_retry")
        assert worker.stop() == 0
    finally:
        worker.kill()
    saved = json.loads((backup_dir / "outbox.json").read_text())
    [entry] = saved["entries"]
    assert entry["channel"] == "slack"
    assert entry["alert"]["title"] == "Scheduled backup missed"

    slack.respond_always(200)
    again = WorkerProcess(["backup-worker"], env).start()
    try:
        wait_for(lambda: len(slack.accepted) == 1, what="the kept alert")
        assert again.stop() == 0
    finally:
        again.kill()
    assert again.events("outbox_resend")[0]["count"] == 1
    assert again.events("run_missed") == []
    assert json.loads((backup_dir / "outbox.json").read_text())["entries"] == []
