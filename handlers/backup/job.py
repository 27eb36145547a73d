"""One backup run: every database, then globals, then status, alerts and retention."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from handlers.backup import retention
from handlers.backup.dump import Dumper
from handlers.backup.errors import BackupError, SymlinkError
from handlers.backup.layout import BackupFile, Kind, Layout
from handlers.backup.postgres import Connection, database_exists, list_databases
from handlers.backup.settings import BackupSettings
from handlers.backup.status import StatusStore
from reactor import signals
from reactor.alerts import Alert, AlertType

logger = logging.getLogger(__name__)

WORKER = "backup-worker"
ALL_DATABASES = "(all databases)"
SUNDAY = 6


@dataclass(frozen=True, slots=True)
class BackupResult:
    """The outcome of one backup attempt, sent with ``signals.backup_finished``."""

    database: str
    succeeded: bool
    started: datetime
    duration_seconds: float
    path: Path | None = None
    size_bytes: int = 0
    step: str = ""
    """The step that failed: connect, version_check, space_check, pg_dump, verify..."""
    error: str = ""
    stderr: str = ""
    """The last lines of the failing program's stderr."""


@dataclass(slots=True)
class RunReport:
    """Every result of one run; ``skipped`` when another run held the lock."""

    results: list[BackupResult] = field(default_factory=list)
    skipped: bool = False

    @property
    def succeeded(self) -> bool:
        return not self.skipped and all(result.succeeded for result in self.results)


class RunLock:
    """An exclusive ``flock`` on BACKUP_DIR/.lock, shared by worker and commands.

    The kernel drops the lock when its holder dies, so a killed run never
    leaves it stuck.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None

    def acquire(self) -> bool:
        """Take the lock; return False when another process holds it.

        Raises :class:`SymlinkError` when the lock file is a symbolic link,
        which would make the worker create or open a file outside BACKUP_DIR.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            descriptor = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SymlinkError(str(self.path), "lock file") from exc
            raise
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._descriptor = descriptor
        return True

    def release(self) -> None:
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None


def policy_of(settings: BackupSettings) -> retention.Policy:
    """Build the retention policy from the settings."""
    return retention.Policy(
        daily_days=settings.backup_retention_days,
        weekly_weeks=settings.backup_weekly_retention,
        monthly_months=settings.backup_monthly_retention,
        keep_min=settings.backup_keep_min,
    )


def connection_of(settings: BackupSettings) -> Connection:
    """Build the libpq connection settings."""
    return Connection(
        settings.pghost, settings.pgport, settings.pguser, settings.password
    )


class BackupJob:
    """Run backups and report each result through the signals."""

    def __init__(
        self,
        settings: BackupSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.layout = Layout(settings.backup_dir)
        self.connection = connection_of(settings)
        self.dumper = Dumper(
            self.layout,
            self.connection,
            settings.backup_format,
            settings.backup_compression_level,
        )
        self.status_store = StatusStore(self.layout.status_path)
        self.policy = policy_of(settings)

    async def run(self, databases: list[str] | None = None) -> RunReport:
        """Back up ``databases`` (default: the configured ones), then globals."""
        self.layout.ensure_dir(self.layout.root)
        lock = RunLock(self.layout.lock_path)
        try:
            acquired = lock.acquire()
        except SymlinkError as exc:
            result = self._failure(ALL_DATABASES, self.clock(), 0.0, exc)
            self._report(result)
            return RunReport(results=[result])
        if not acquired:
            logger.warning(
                "Backup run skipped: another run is still in progress",
                extra={"event": "run_skipped", "lock": str(self.layout.lock_path)},
            )
            return RunReport(skipped=True)
        try:
            return await self._run_locked(databases)
        finally:
            lock.release()

    async def _run_locked(self, requested: list[str] | None) -> RunReport:
        report = RunReport()
        started = time.monotonic()
        logger.info("Backup run started", extra={"event": "run_started"})
        self.layout.remove_partials()
        self.dumper.reset()

        names = requested or list(self.settings.backup_databases)
        untracked = self._untracked(requested)
        if not names:
            try:
                names = await list_databases(self.connection)
            except BackupError as exc:
                result = self._failure(ALL_DATABASES, self.clock(), 0.0, exc)
                report.results.append(result)
                self._report(result)
                return report
        for name in names:
            result = await self.backup_database(name, untracked=name in untracked)
            report.results.append(result)

        if not requested and self.settings.backup_globals:
            await self.backup_globals()
        logger.info(
            "Backup run finished",
            extra={
                "event": "run_finished",
                "succeeded": sum(r.succeeded for r in report.results),
                "failed": sum(not r.succeeded for r in report.results),
                "duration_seconds": round(time.monotonic() - started, 3),
            },
        )
        return report

    def _untracked(self, requested: list[str] | None) -> set[str]:
        """Return the requested databases that neither the settings nor the status name.

        These were typed on the command line, so a name that does not exist
        is a typing error, not a database whose backups stopped.
        """
        if not requested:
            return set()
        known = set(self.settings.backup_databases)
        known.update(self.status_store.load().databases)
        return set(requested) - known

    async def backup_database(
        self, database: str, *, untracked: bool = False
    ) -> BackupResult:
        """Dump one database, record and report the outcome; prune after a success.

        With ``untracked``, a database that does not exist is logged as an
        error but neither recorded in status.json nor alerted, so a mistyped
        ``backup now --database`` leaves no metric that would never clear.
        """
        moment = self.clock()
        started = time.monotonic()
        logger.info(
            "Backup started", extra={"event": "backup_started", "database": database}
        )
        try:
            backup = await self.dumper.dump(database, moment)
            self._add_links(backup)
        except BackupError as exc:
            result = self._failure(database, moment, time.monotonic() - started, exc)
            if untracked and await self._is_missing(exc, database):
                self._report_not_found(result)
                return result
        else:
            result = BackupResult(
                database=database,
                succeeded=True,
                started=moment,
                duration_seconds=time.monotonic() - started,
                path=backup.path,
                size_bytes=backup.size,
            )
        self._record(result)
        self._report(result)
        if result.succeeded:
            self._prune(database, moment)
        return result

    def _add_links(self, backup: BackupFile) -> None:
        local = self.settings.local_time(backup.time)
        try:
            if local.weekday() == SUNDAY and self.policy.enabled(Kind.WEEKLY):
                self.layout.add_snapshot(backup, Kind.WEEKLY)
            if local.day == 1 and self.policy.enabled(Kind.MONTHLY):
                self.layout.add_snapshot(backup, Kind.MONTHLY)
            self.layout.point_latest(backup)
        except SymlinkError as exc:
            raise BackupError(
                "snapshot",
                f"{exc.message}; the daily file {backup.path.name} is complete",
            ) from exc
        except OSError as exc:
            # The dump itself is verified and stays; only a link is missing.
            raise BackupError(
                "snapshot",
                f"linking {backup.path.name} failed: {exc.strerror}; "
                "the daily file is complete",
            ) from exc

    def _failure(
        self, database: str, moment: datetime, duration: float, exc: BackupError
    ) -> BackupResult:
        return BackupResult(
            database=database,
            succeeded=False,
            started=moment,
            duration_seconds=duration,
            step=exc.step,
            error=exc.message,
            stderr=exc.stderr,
        )

    def _record(self, result: BackupResult) -> None:
        status = self.status_store.load()
        entry = status.of(result.database)
        entry.last_attempt_time = result.started.timestamp()
        entry.last_duration_seconds = round(result.duration_seconds, 3)
        if result.succeeded:
            entry.last_status = 1
            entry.last_success_time = result.started.timestamp()
            entry.last_size_bytes = result.size_bytes
            entry.last_success_file = str(result.path or "")
            entry.last_error_step = ""
        else:
            entry.last_status = 0
            entry.failures_total += 1
            entry.last_error_step = result.step
        try:
            self.status_store.save(status)
        except OSError as exc:
            logger.error(
                "Could not write the backup status file",
                extra={
                    "event": "status_write_failed",
                    "database": result.database,
                    "path": str(self.status_store.path),
                    "error": str(exc),
                },
            )

    async def _is_missing(self, error: BackupError, database: str) -> bool:
        # The server words its error in its own lc_messages, so the catalog,
        # not the message, decides whether the database exists.
        if error.step != "connect":
            return False
        return await database_exists(self.connection, database) is False

    def _report_not_found(self, result: BackupResult) -> None:
        logger.error(
            "Backup failed: database %r does not exist. Check the name; nothing "
            "was recorded in status.json",
            result.database,
            extra={**_failure_fields(result), "recorded": False},
        )

    def _report(self, result: BackupResult) -> None:
        if result.succeeded:
            logger.info(
                "Backup succeeded",
                extra={
                    "event": "backup_succeeded",
                    "database": result.database,
                    "path": str(result.path),
                    "size_bytes": result.size_bytes,
                    "duration_seconds": round(result.duration_seconds, 3),
                },
            )
        else:
            logger.error("Backup failed", extra=_failure_fields(result))
        signals.publish(signals.backup_finished, self, result=result)
        if result.succeeded and not self.settings.backup_notify_success:
            return
        signals.publish(signals.alert_raised, self, alert=self._alert(result))

    def _alert(self, result: BackupResult) -> Alert:
        if result.succeeded:
            return Alert(
                type=AlertType.INFO,
                title=f"Backup of {result.database} succeeded",
                text=f"{result.path.name if result.path else ''} written and verified",
                worker=WORKER,
                host=self.settings.instance,
                subject=result.database,
                fields=(
                    ("database", result.database),
                    ("size", format_size(result.size_bytes)),
                    ("duration", f"{result.duration_seconds:.1f} s"),
                    ("file", str(result.path)),
                ),
                kind="backup_succeeded",
            )
        fields = [("database", result.database), ("step", result.step)]
        if result.stderr:
            fields.append(("stderr", result.stderr))
        return Alert(
            type=AlertType.ERROR,
            title=f"Backup of {result.database} failed",
            text=result.error,
            worker=WORKER,
            host=self.settings.instance,
            subject=result.database,
            fields=tuple(fields),
            kind="backup_failed",
        )

    def _prune(self, database: str, now: datetime) -> None:
        # NOTE: retention trusts the clock. One run with a clock far ahead
        # deletes every backup past its limit except the BACKUP_KEEP_MIN
        # newest, and nothing here checks the time against older backups.
        try:
            deletions = retention.plan(self.layout, self.policy, now, database)
            retention.apply(self.layout, deletions)
        except OSError as exc:
            logger.error(
                "Retention failed",
                extra={
                    "event": "retention_failed",
                    "database": database,
                    "error": str(exc),
                },
            )

    async def backup_globals(self) -> BackupFile | None:
        """Dump roles; a refusal is reported as a warning, not a failed backup."""
        moment = self.clock()
        try:
            backup = await self.dumper.dump_globals(moment)
        except BackupError as exc:
            logger.warning(
                "Globals dump failed; database backups are unaffected",
                extra={
                    "event": "globals_failed",
                    "step": exc.step,
                    "error": exc.message,
                    "stderr": exc.stderr,
                },
            )
            signals.publish(
                signals.alert_raised,
                self,
                alert=Alert(
                    type=AlertType.WARNING,
                    title="Roles and globals were not backed up",
                    text=_globals_failure_text(exc),
                    worker=WORKER,
                    host=self.settings.instance,
                    subject="globals",
                    fields=(("step", exc.step), ("stderr", exc.stderr)),
                    kind="globals_failed",
                ),
            )
            return None
        logger.info(
            "Globals dumped",
            extra={"event": "globals_succeeded", "path": str(backup.path)},
        )
        files = self.layout.globals_files()
        retention.apply(self.layout, retention.plan_series(files, self.policy, moment))
        return backup


def _globals_failure_text(error: BackupError) -> str:
    if error.step == "pg_dumpall":
        return (
            f"{error.message}. PGUSER may lack the right to read pg_authid; "
            "the database backups are unaffected."
        )
    return f"{error.message}. The database backups are unaffected."


def _failure_fields(result: BackupResult) -> dict[str, object]:
    return {
        "event": "backup_failed",
        "database": result.database,
        "step": result.step,
        "error": result.error,
        "stderr": result.stderr,
    }


def format_size(size: int) -> str:
    """Format a byte count for people, e.g. ``12.3 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
