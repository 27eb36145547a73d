"""status.json and schedule.json: corrupt or wrongly shaped files never stop backups."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from handlers.backup.status import (
    DatabaseStatus,
    ScheduleState,
    ScheduleStore,
    Status,
    StatusStore,
)
from tests.backup.conftest import Postgres
from tests.support.worker import run_once

Cli = Callable[..., subprocess.CompletedProcess[str]]


def entry_of(**fields: object) -> str:
    return json.dumps({"version": 1, "databases": {"shop": fields}})


def raw_entry(key: str, literal: str) -> str:
    """A status file whose one field is ``literal``, which json.dumps cannot write."""
    return '{"version": 1, "databases": {"shop": {"' + key + '": ' + literal + "}}}"


BAD_STATUS = {
    "databases_array": '{"version": 1, "databases": []}',
    "entry_number": '{"version": 1, "databases": {"shop": 5}}',
    "time_string": entry_of(last_success_time="yesterday"),
    "top_level_array": "[]",
    "top_level_null": "null",
    "no_version": '{"databases": {}}',
    "float_overflow": raw_entry("last_success_time", "1e400"),
    "infinity": raw_entry("last_duration_seconds", "Infinity"),
    "nan": raw_entry("last_attempt_time", "NaN"),
    "huge_int": raw_entry("failures_total", "1" + "0" * 400),
    "time_out_of_range": entry_of(last_success_time=1e300),
    "negative": entry_of(last_size_bytes=-1),
    "bool_for_int": entry_of(last_status=True),
    "float_for_int": entry_of(failures_total=1.5),
    "number_for_str": entry_of(last_success_file=7),
    "deep_nesting": "[" * 100_000,
    "not_json": "{",
    "not_utf8": b"\xff\xfe".decode("latin-1"),
}

BAD_SCHEDULE = {
    "number": '{"version": 1, "first_start": 5}',
    "not_a_time": '{"version": 1, "first_start": "yesterday"}',
    "out_of_range": '{"version": 1, "last_fire": "9999-12-31T23:59:59-14:00"}',
    "top_level_array": "[]",
    "infinity": '{"version": 1, "last_fire": Infinity}',
}


def assert_moved_aside(
    path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert not path.exists()
    aside = list(path.parent.glob(f"{path.name}.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == content.encode("latin-1")
    logged = [r for r in caplog.records if getattr(r, "event", "") == "status_corrupt"]
    assert len(logged) == 1
    assert getattr(logged[0], "moved_to", "") == str(aside[0])


@pytest.mark.parametrize("content", BAD_STATUS.values(), ids=BAD_STATUS.keys())
def test_bad_status_moved_aside(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(content.encode("latin-1"))

    assert StatusStore(path).load() == Status()

    assert_moved_aside(path, content, caplog)


@pytest.mark.parametrize("content", BAD_SCHEDULE.values(), ids=BAD_SCHEDULE.keys())
def test_bad_schedule_moved_aside(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "schedule.json"
    path.write_bytes(content.encode("latin-1"))

    assert ScheduleStore(path).load() == ScheduleState()

    assert_moved_aside(path, content, caplog)


def test_valid_status_round_trips(tmp_path: Path) -> None:
    store = StatusStore(tmp_path / "status.json")
    entry = DatabaseStatus(
        last_success_time=1_750_000_000.5,
        last_success_file="/backups/daily/shop/shop_20250615T020000Z.dump",
        last_duration_seconds=1.25,
        last_size_bytes=4096,
        last_status=1,
        last_attempt_time=1_750_000_000.5,
        failures_total=2,
    )
    store.save(Status({"shop": entry}))

    assert store.load() == Status({"shop": entry})
    assert (tmp_path / "status.json").exists()


def test_status_ignores_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text(entry_of(last_success_time=5, failures_total=2, added_later="x"))

    status = StatusStore(path).load()

    assert status.databases["shop"].last_success_time == 5.0
    assert status.databases["shop"].failures_total == 2
    assert path.exists()


def test_valid_schedule_round_trips(tmp_path: Path) -> None:
    store = ScheduleStore(tmp_path / "schedule.json")
    state = ScheduleState(
        first_start=datetime(2025, 1, 1, tzinfo=UTC),
        last_fire=datetime(2025, 6, 1, 2, tzinfo=UTC),
    )
    store.save(state)

    assert store.load() == state


def test_healthcheck_reads_bad_status(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    schedule = {
        "version": 1,
        "first_start": (now - timedelta(days=3)).isoformat(),
        "last_fire": (now - timedelta(hours=1)).isoformat(),
    }
    (tmp_path / "schedule.json").write_text(json.dumps(schedule))
    (tmp_path / "status.json").write_text('{"version": 1, "databases": {"shop": 5}}')

    result = run_once(["healthcheck", "backup-worker"], {"BACKUP_DIR": str(tmp_path)})

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("unhealthy: no backup recorded")


@pytest.mark.postgres
@pytest.mark.parametrize(
    "content",
    [BAD_STATUS["databases_array"], BAD_STATUS["entry_number"], BAD_STATUS["infinity"]],
    ids=["databases_array", "entry_number", "infinity"],
)
def test_backup_runs_after_bad_status(
    pg: Postgres, backup_cli: Cli, backup_dir: Path, content: str
) -> None:
    database = pg.create_database("status")
    backup_dir.mkdir()
    (backup_dir / "status.json").write_text(content)

    result = backup_cli("backup", "now", "--database", database)

    assert result.returncode == 0, result.stdout + result.stderr
    assert '"event": "status_corrupt"' in result.stdout
    assert '"event": "backup_succeeded"' in result.stdout
    assert len(list(backup_dir.glob("status.json.corrupt-*"))) == 1
    status = json.loads((backup_dir / "status.json").read_text())
    assert status["databases"][database]["last_status"] == 1
