"""Per-database backup status and the schedule's memory, kept in BACKUP_DIR.

Both files are replaced atomically, so the last-success metrics and the
missed-run check survive a restart of the worker.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from handlers.backup.layout import FILE_MODE
from reactor.store import write_atomic

logger = logging.getLogger(__name__)

STATUS_VERSION = 1


@dataclass(slots=True)
class DatabaseStatus:
    """The outcome of the last backups of one database; times in Unix seconds."""

    last_success_time: float = 0.0
    last_success_file: str = ""
    last_duration_seconds: float = 0.0
    last_size_bytes: int = 0
    last_status: int = 0
    """1 when the last attempt succeeded, else 0."""
    last_attempt_time: float = 0.0
    last_error_step: str = ""
    failures_total: int = 0


@dataclass(slots=True)
class Status:
    """Every database's status."""

    databases: dict[str, DatabaseStatus] = field(default_factory=dict)

    def of(self, database: str) -> DatabaseStatus:
        return self.databases.setdefault(database, DatabaseStatus())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != STATUS_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        return data
    except (ValueError, AttributeError) as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        os.replace(path, aside)
        logger.error(
            "Status file is unreadable; moved it aside and starting afresh",
            extra={
                "event": "status_corrupt",
                "path": str(path),
                "moved_to": str(aside),
                "error": str(exc),
            },
        )
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    payload = {"version": STATUS_VERSION, **data}
    write_atomic(path, json.dumps(payload, indent=1).encode(), mode=FILE_MODE)


class StatusStore:
    """Load and save :class:`Status` as ``status.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Status:
        """Read the status; a missing or corrupt file is an empty one."""
        data = _read_json(self.path)
        if data is None:
            return Status()
        known = set(DatabaseStatus.__dataclass_fields__)
        databases = {}
        for name, entry in data.get("databases", {}).items():
            values = {k: v for k, v in entry.items() if k in known}
            databases[name] = DatabaseStatus(**values)
        return Status(databases)

    def save(self, status: Status) -> None:
        data = {
            "databases": {
                name: asdict(entry) for name, entry in sorted(status.databases.items())
            }
        }
        _write_json(self.path, data)


@dataclass(slots=True)
class ScheduleState:
    """When the worker first ran, and the last scheduled fire time it handled."""

    first_start: datetime | None = None
    last_fire: datetime | None = None


class ScheduleStore:
    """Load and save :class:`ScheduleState` as ``schedule.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> ScheduleState:
        data = _read_json(self.path)
        if data is None:
            return ScheduleState()
        return ScheduleState(
            first_start=_parse_time(data.get("first_start")),
            last_fire=_parse_time(data.get("last_fire")),
        )

    def save(self, state: ScheduleState) -> None:
        _write_json(
            self.path,
            {
                "first_start": _format_time(state.first_start),
                "last_fire": _format_time(state.last_fire),
            },
        )


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _format_time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None
