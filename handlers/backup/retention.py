"""Retention: the plan of expired backups, and their deletion.

A file is deleted only when it is strictly older than its kind's limit and is
not one of the newest ``keep_min`` backups of its database. The newest backups
are protected in every directory, so a string of failed runs can never leave
fewer than ``keep_min`` backups behind. A weekly or monthly limit of 0 turns
those snapshots off: none are made and none are deleted.
"""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from handlers.backup.errors import SymlinkError
from handlers.backup.layout import BackupFile, Kind, Layout

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Policy:
    """Retention limits: days for daily, weeks for weekly, months for monthly."""

    daily_days: int
    weekly_weeks: int
    monthly_months: int
    keep_min: int

    def enabled(self, kind: Kind) -> bool:
        """Tell whether snapshots of ``kind`` are made and pruned."""
        if kind is Kind.WEEKLY:
            return self.weekly_weeks > 0
        if kind is Kind.MONTHLY:
            return self.monthly_months > 0
        return True

    def cutoff(self, kind: Kind | None, now: datetime) -> datetime:
        """Return the time before which a file of ``kind`` is past its limit."""
        if kind is Kind.WEEKLY:
            return now - timedelta(weeks=self.weekly_weeks)
        if kind is Kind.MONTHLY:
            return subtract_months(now, self.monthly_months)
        return now - timedelta(days=self.daily_days)

    def describe(self, kind: Kind | None) -> str:
        if kind is Kind.WEEKLY:
            return f"{self.weekly_weeks} weeks"
        if kind is Kind.MONTHLY:
            return f"{self.monthly_months} months"
        return f"{self.daily_days} days"


@dataclass(frozen=True, slots=True)
class Deletion:
    """A file retention deletes, and why."""

    file: BackupFile
    reason: str


def subtract_months(moment: datetime, months: int) -> datetime:
    """Go back ``months`` calendar months, clamping the day to the month's length."""
    index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(index, 12)
    month += 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def plan_series(
    files: list[BackupFile], policy: Policy, now: datetime
) -> list[Deletion]:
    """Plan deletions among the files of one database (every kind) or of globals."""
    stamps = sorted({item.time for item in files}, reverse=True)
    protected = set(stamps[: policy.keep_min])
    deletions = []
    for item in sorted(files, key=lambda f: (f.time, str(f.kind))):
        if item.kind is not None and not policy.enabled(item.kind):
            continue
        cutoff = policy.cutoff(item.kind, now)
        if item.time >= cutoff:
            continue
        if item.time in protected:
            continue
        kind = item.kind.value if item.kind is not None else "globals"
        deletions.append(
            Deletion(
                item,
                f"{kind} backup older than {policy.describe(item.kind)} "
                f"(taken before {cutoff.isoformat(timespec='seconds')})",
            )
        )
    return deletions


def plan(
    layout: Layout, policy: Policy, now: datetime, database: str | None = None
) -> list[Deletion]:
    """Plan retention for one database, or for every database and globals."""
    databases = [database] if database is not None else layout.databases()
    deletions: list[Deletion] = []
    for name in databases:
        files = [item for kind in Kind for item in layout.files(kind, name)]
        deletions.extend(plan_series(files, policy, now))
    if database is None:
        deletions.extend(plan_series(layout.globals_files(), policy, now))
    return deletions


def apply(layout: Layout, deletions: list[Deletion]) -> int:
    """Delete the planned files; return how many were deleted."""
    deleted = 0
    for deletion in deletions:
        try:
            layout.remove_file(deletion.file.path)
        except FileNotFoundError:
            continue
        except (OSError, SymlinkError) as exc:
            logger.error(
                "Could not delete an expired backup",
                extra={
                    "event": "retention_failed",
                    "database": deletion.file.database,
                    "path": str(deletion.file.path),
                    "error": str(exc),
                },
            )
            continue
        deleted += 1
        logger.info(
            "Deleted an expired backup",
            extra={
                "event": "backup_deleted",
                "database": deletion.file.database,
                "path": str(deletion.file.path),
                "reason": deletion.reason,
            },
        )
    return deleted
