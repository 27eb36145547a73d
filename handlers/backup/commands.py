"""The ``backup-worker`` and ``backup ...`` commands, and the backup healthcheck."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from handlers.backup import retention
from handlers.backup.dump import verify
from handlers.backup.errors import BackupError, SymlinkError
from handlers.backup.job import (
    BackupJob,
    RunLock,
    connection_of,
    format_size,
    policy_of,
)
from handlers.backup.layout import Kind, Layout
from handlers.backup.restore import find_globals, restore
from handlers.backup.schedule import previous_fire_time
from handlers.backup.settings import BackupFileSettings, BackupSettings
from handlers.backup.status import ScheduleStore, StatusStore
from reactor.config import load, secret_values
from reactor.errors import ConfigError
from reactor.logs import setup_logging

EXIT_OK = 0
EXIT_FAILURE = 1

# Backups hold every row of every table: files the worker creates are 0600
# and its directories 0700, whatever the container's umask.
_UMASK = 0o077


def _secrets(settings: BackupSettings) -> list[str]:
    return secret_values(settings)


def prepare_backup_dir(layout: Layout) -> None:
    """Create BACKUP_DIR with mode 0700, or raise :class:`ConfigError` naming it."""
    try:
        layout.ensure_dir(layout.root)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError):
            reason = "a file that is not a directory is in the way"
        where = f" ({exc.filename})" if exc.filename else ""
        raise ConfigError(
            f"BACKUP_DIR={str(layout.root)!r} cannot be used as a directory: "
            f"{reason}{where}; set it to a writable directory path"
        ) from exc


def _settings(log: bool = True) -> BackupSettings:
    settings = load(BackupSettings)
    os.umask(_UMASK)
    if log:
        layout = Layout(settings.backup_dir)
        prepare_backup_dir(layout)
        setup_logging(
            "backup-worker",
            settings.log_level,
            layout.log_path,
            secrets=_secrets(settings),
        )
    return settings


def cmd_worker(_args: argparse.Namespace) -> int:
    from handlers.backup.worker import run_worker

    return asyncio.run(run_worker(_settings()))


async def _run_now(settings: BackupSettings, databases: list[str] | None) -> int:
    from handlers.backup.worker import reporting

    job = BackupJob(settings)
    async with reporting(settings, job.status_store, one_off=True):
        report = await job.run(databases)
    return EXIT_OK if report.succeeded else EXIT_FAILURE


def cmd_now(args: argparse.Namespace) -> int:
    settings = _settings()
    return asyncio.run(_run_now(settings, args.database or None))


def cmd_list(args: argparse.Namespace) -> int:
    settings = _settings(log=False)
    layout = Layout(settings.backup_dir)
    connection = connection_of(settings)
    rows = []
    failed = False
    files = [item for kind in Kind for item in layout.files(kind)]
    files.sort(key=lambda item: (item.database, item.time, str(item.kind)))
    for item in [*files, *layout.globals_files()]:
        # A matching name proves nothing about the contents, because anyone
        # can copy a file in. Only --verify reads the file, so "-" means
        # "not checked".
        verified = "-"
        if args.verify:
            try:
                asyncio.run(verify(item.path, connection.env()))
            except BackupError:
                verified = "FAILED"
                failed = True
            else:
                verified = "yes"
        rows.append(
            (
                item.database,
                item.kind.value if item.kind is not None else "globals",
                item.time.isoformat(timespec="seconds"),
                format_size(item.size),
                verified,
                str(item.path),
            )
        )
    header = ("DATABASE", "KIND", "TIME", "SIZE", "VERIFIED", "FILE")
    _print_table(header, rows)
    return EXIT_FAILURE if failed else EXIT_OK


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [len(column) for column in header]
    for row in rows:
        widths = [max(w, len(value)) for w, value in zip(widths, row, strict=True)]
    for row in [header, *rows]:
        line = "  ".join(value.ljust(w) for value, w in zip(row, widths, strict=True))
        print(line.rstrip())


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _settings(log=not args.dry_run)
    layout = Layout(settings.backup_dir)
    deletions = retention.plan(layout, policy_of(settings), datetime.now(UTC))
    verb = "would delete" if args.dry_run else "delete"
    for deletion in deletions:
        print(f"{verb} {deletion.file.path}: {deletion.reason}")
    if not deletions:
        print("nothing to delete")
    if not args.dry_run:
        retention.apply(layout, deletions)
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    """Remove databases from status.json, so their metrics are no longer pushed."""
    settings = load(BackupFileSettings)
    os.umask(_UMASK)
    layout = Layout(settings.backup_dir)
    store = StatusStore(layout.status_path)
    if not store.path.exists():
        print(f"molochain-workers: {store.path} does not exist", file=sys.stderr)
        return EXIT_FAILURE
    # Runs rewrite status.json while they hold the lock; taking it keeps a
    # running backup from writing the old entries back.
    lock = RunLock(layout.lock_path)
    try:
        acquired = lock.acquire()
    except SymlinkError as exc:
        print(f"molochain-workers: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    if not acquired:
        print(
            "molochain-workers: a backup run is in progress; try again when it ends",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        status = store.load()
        missing = [name for name in args.names if name not in status.databases]
        for name in args.names:
            status.databases.pop(name, None)
        store.save(status)
    finally:
        lock.release()
    for name in args.names:
        if name in missing:
            print(f"{name}: not in {store.path}")
            continue
        print(
            f"forgot {name}; its series leave the Pushgateway at the worker's next push"
        )
        if name in settings.backup_databases:
            print(f"{name} is in BACKUP_DATABASES, so the next run records it again")
    return EXIT_FAILURE if missing else EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    settings = _settings()
    layout = Layout(settings.backup_dir)
    source = Path(args.file)
    try:
        globals_file = None
        if args.globals == "auto":
            globals_file = find_globals(layout, source.resolve())
        elif args.globals:
            globals_file = Path(args.globals)
        asyncio.run(
            restore(
                connection_of(settings),
                source,
                args.dbname,
                clean=args.clean,
                globals_file=globals_file,
            )
        )
    except BackupError as exc:
        detail = f"\n{exc.stderr}" if exc.stderr else ""
        print(
            f"molochain-workers: restore failed: {exc.message}{detail}", file=sys.stderr
        )
        return EXIT_FAILURE
    print(f"restored {source} into {args.dbname}")
    return EXIT_OK


def healthcheck(_args: argparse.Namespace) -> int:
    """Exit 1 when a database's last success is older than the schedule allows.

    It reads only files, so it loads the settings without PGPASSWORD.
    """
    settings = load(BackupFileSettings)
    layout = Layout(settings.backup_dir)
    now = datetime.now(UTC)
    grace = timedelta(seconds=settings.backup_healthcheck_grace)
    expected = previous_fire_time(settings.trigger(), now - grace)

    try:
        state = ScheduleStore(layout.schedule_path).load()
        status = StatusStore(layout.status_path).load()
    except OSError as exc:
        print(f"unhealthy: cannot read {exc.filename or layout.root}: {exc.strerror}")
        return EXIT_FAILURE
    if state.first_start is None:
        print(f"unhealthy: the backup worker has never started with {layout.root}")
        return EXIT_FAILURE
    if expected is None or expected < state.first_start:
        print("healthy: no scheduled backup is due yet")
        return EXIT_OK

    databases = settings.backup_databases or sorted(status.databases)
    if not databases:
        print(f"unhealthy: no backup recorded in {layout.status_path}")
        return EXIT_FAILURE

    stale = []
    for database in databases:
        entry = status.databases.get(database)
        last = entry.last_success_time if entry is not None else 0.0
        if last < expected.timestamp():
            when = (
                datetime.fromtimestamp(last, UTC).isoformat(timespec="seconds")
                if last
                else "never"
            )
            stale.append(f"{database} (last success {when})")
    if stale:
        print(
            f"unhealthy: no successful backup since the run due at "
            f"{expected.isoformat(timespec='seconds')} "
            f"(+{settings.backup_healthcheck_grace:g} s grace): {', '.join(stale)}"
        )
        return EXIT_FAILURE
    age = time.time() - min(status.databases[d].last_success_time for d in databases)
    print(f"healthy: oldest last success {age:.0f} s ago")
    return EXIT_OK


def add_commands(commands: Any) -> None:
    """Add ``backup-worker`` and ``backup`` to the CLI's subcommands."""
    worker = commands.add_parser(
        "backup-worker", help="run scheduled PostgreSQL backups until SIGTERM"
    )
    worker.set_defaults(handler=cmd_worker)

    backup = commands.add_parser("backup", help="run, list, prune or restore backups")
    actions = backup.add_subparsers(dest="action", required=True, metavar="ACTION")

    now = actions.add_parser("now", help="run one backup now; exit 1 on any failure")
    now.add_argument(
        "--database",
        action="append",
        metavar="NAME",
        help="back up only this database (repeatable); skips the globals dump",
    )
    now.set_defaults(handler=cmd_now)

    listing = actions.add_parser("list", help="list the backups in BACKUP_DIR")
    listing.add_argument(
        "--verify", action="store_true", help="read every file back and report damage"
    )
    listing.set_defaults(handler=cmd_list)

    prune = actions.add_parser("prune", help="apply retention now")
    prune.add_argument(
        "--dry-run",
        action="store_true",
        help="print what retention would delete and why, and delete nothing",
    )
    prune.set_defaults(handler=cmd_prune)

    forget = actions.add_parser(
        "forget",
        help="remove databases from status.json, such as a mistyped or dropped one",
    )
    forget.add_argument("names", nargs="+", metavar="NAME", help="a database name")
    forget.set_defaults(handler=cmd_forget)

    restoring = actions.add_parser(
        "restore", help="restore a backup file into a database"
    )
    restoring.add_argument("file", help="a .dump, .sql.gz or .sql backup file")
    restoring.add_argument(
        "--dbname", required=True, help="the target database; created when missing"
    )
    restoring.add_argument(
        "--clean",
        action="store_true",
        help="drop and recreate the target database when it is not empty",
    )
    restoring.add_argument(
        "--globals",
        nargs="?",
        const="auto",
        metavar="FILE",
        help="restore roles first, from FILE or from the newest globals file "
        "taken before the backup",
    )
    restoring.set_defaults(handler=cmd_restore)
