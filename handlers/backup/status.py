"""Per-database backup status and the schedule's memory, kept in BACKUP_DIR.

Both files are replaced atomically, so the last-success metrics and the
missed-run check survive a restart of the worker.
"""

from __future__ import annotations

import json
import logging
import math
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from handlers.backup.layout import FILE_MODE
from reactor.store import CORRUPT_ERRORS, move_aside, write_atomic

logger = logging.getLogger(__name__)

STATUS_VERSION = 1

T = TypeVar("T")


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


_FIELD_TYPES: dict[str, type] = typing.get_type_hints(DatabaseStatus)
"""The JSON value type each :class:`DatabaseStatus` field is read as."""
_TIME_FIELDS = {"last_success_time", "last_attempt_time"}


@dataclass(slots=True)
class Status:
    """Every database's status."""

    databases: dict[str, DatabaseStatus] = field(default_factory=dict)

    def of(self, database: str) -> DatabaseStatus:
        return self.databases.setdefault(database, DatabaseStatus())


def _read_json(path: Path, parse: Callable[[dict[str, Any]], T]) -> T | None:
    """Read and ``parse`` a state file; None when it is missing or corrupt.

    A corrupt file, including valid JSON of the wrong shape, is moved aside
    with a time suffix and logged, so one bad file never stops the backups.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"top level is {_json_type(data)}, expected an object")
        if data.get("version") != STATUS_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        return parse(data)
    # JSON nested deeper than the parser's recursion limit raises RecursionError.
    except (*CORRUPT_ERRORS, RecursionError) as exc:
        aside = move_aside(path)
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


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    payload = {"version": STATUS_VERSION, **data}
    write_atomic(path, json.dumps(payload, indent=1).encode(), mode=FILE_MODE)


class StatusStore:
    """Load and save :class:`Status` as ``status.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Status:
        """Read the status; a missing or corrupt file is an empty one."""
        return _read_json(self.path, _parse_status) or Status()

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
        """Read the schedule state; a missing or corrupt file is an empty one."""
        return _read_json(self.path, _parse_schedule) or ScheduleState()

    def save(self, state: ScheduleState) -> None:
        _write_json(
            self.path,
            {
                "first_start": _format_time(state.first_start),
                "last_fire": _format_time(state.last_fire),
            },
        )


def _parse_status(data: dict[str, Any]) -> Status:
    databases = data.get("databases", {})
    if not isinstance(databases, dict):
        raise ValueError(f"databases is {_json_type(databases)}, expected an object")
    return Status(
        {name: _parse_entry(name, entry) for name, entry in databases.items()}
    )


def _parse_entry(name: str, entry: object) -> DatabaseStatus:
    if not isinstance(entry, dict):
        raise ValueError(f"databases.{name} is {_json_type(entry)}, expected an object")
    values: dict[str, Any] = {}
    # Unknown keys are ignored, so an older worker reads a newer file.
    for key, expected in _FIELD_TYPES.items():
        if key in entry:
            where = f"databases.{name}.{key}"
            values[key] = _parse_field(where, entry[key], expected)
    for key in _TIME_FIELDS & values.keys():
        # The healthcheck turns these into dates, which fails for a time
        # outside the years datetime can hold.
        try:
            datetime.fromtimestamp(values[key], UTC)
        except (OverflowError, ValueError, OSError) as exc:
            raise ValueError(
                f"databases.{name}.{key} is {values[key]!r}, out of range: {exc}"
            ) from exc
    return DatabaseStatus(**values)


def _parse_field(where: str, value: object, expected: type) -> object:
    if expected is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} is {_json_type(value)}, expected a string")
        return value
    # bool is a subclass of int, and JSON true loads as True.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} is {_json_type(value)}, expected a number")
    if expected is int and not isinstance(value, int):
        raise ValueError(f"{where} is {value!r}, expected an integer")
    # json loads 1e400 and Infinity as inf. An int beyond the float range
    # could not be sent as a metric, and isfinite raises OverflowError on it.
    try:
        finite = math.isfinite(value)
    except OverflowError as exc:
        raise ValueError(f"{where} is an integer beyond the float range") from exc
    if not finite or value < 0:
        raise ValueError(f"{where} is {value!r}, expected a finite number >= 0")
    return float(value) if expected is float else value


def _parse_schedule(data: dict[str, Any]) -> ScheduleState:
    return ScheduleState(
        first_start=_parse_time("first_start", data.get("first_start")),
        last_fire=_parse_time("last_fire", data.get("last_fire")),
    )


def _parse_time(where: str, value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where} is {_json_type(value)}, expected an ISO 8601 time")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # The scheduler compares times in UTC; near the years 1 and 9999 the
    # conversion raises OverflowError, so it fails here, inside the guard.
    moment.astimezone(UTC)
    return moment


def _format_time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None
