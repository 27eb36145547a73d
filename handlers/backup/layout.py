"""The directory layout under BACKUP_DIR and the names of backup files.

::

    BACKUP_DIR/
      daily/<database>/<database>_20250302T020000Z.dump   (or .sql.gz, .sql)
      daily/<database>/latest -> <newest file>
      weekly/<database>/...   hard links to the Sunday backups
      monthly/<database>/...  hard links to the backups of the 1st
      globals/globals_20250302T020000Z.sql
      status.json, schedule.json, backup.log, .lock

Database names are percent-encoded in paths, so any name maps to one safe
directory. Only files that match :data:`FILE_PATTERN` are backups: anything
else in these directories is never listed, counted or deleted.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote, unquote

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
PARTIAL_SUFFIX = ".partial"
LATEST = "latest"
GLOBALS = "globals"

FILE_PATTERN = re.compile(
    r"^(?P<name>[A-Za-z0-9_.%~-]+)_(?P<stamp>\d{8}T\d{6}Z)\.(?P<ext>dump|sql\.gz|sql)$"
)
PARTIAL_PATTERN = re.compile(r"^\..+\.partial$")


class Kind(StrEnum):
    """The directory a backup file sits in; weekly and monthly hold hard links."""

    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


def encode_name(database: str) -> str:
    """Return the path-safe form of a database name."""
    encoded = quote(database, safe="")
    # quote leaves dots alone, and "." or ".." would name the wrong directory.
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    return encoded


def format_stamp(moment: datetime) -> str:
    """Format an aware time as the UTC stamp used in file names."""
    return moment.astimezone(UTC).strftime(STAMP_FORMAT)


def parse_stamp(stamp: str) -> datetime:
    """Parse a file-name stamp into an aware UTC time."""
    return datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=UTC)


def extension(backup_format: str, compression_level: int) -> str:
    """Return the file extension pg_dump's output gets for a format and level."""
    if backup_format == "custom":
        return "dump"
    return "sql.gz" if compression_level > 0 else "sql"


@dataclass(frozen=True, slots=True)
class BackupFile:
    """One finished, verified backup file named by this worker."""

    path: Path
    database: str
    kind: Kind | None
    """None for a globals file."""
    time: datetime
    extension: str

    @property
    def stamp(self) -> str:
        return format_stamp(self.time)

    @property
    def size(self) -> int:
        return self.path.stat().st_size


class Layout:
    """Paths under BACKUP_DIR, and the file operations that keep them consistent."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def schedule_path(self) -> Path:
        return self.root / "schedule.json"

    @property
    def log_path(self) -> Path:
        return self.root / "backup.log"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @property
    def globals_dir(self) -> Path:
        return self.root / GLOBALS

    def directory(self, kind: Kind, database: str) -> Path:
        return self.root / kind.value / encode_name(database)

    def file_name(self, database: str, moment: datetime, ext: str) -> str:
        return f"{encode_name(database)}_{format_stamp(moment)}.{ext}"

    def globals_name(self, moment: datetime) -> str:
        return f"{GLOBALS}_{format_stamp(moment)}.sql"

    def ensure_dir(self, path: Path) -> Path:
        """Create ``path`` and its parents under the root with mode 0700."""
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        current = path
        while True:
            # mkdir's mode is reduced by the umask; directories made earlier
            # by hand may be wider. Backups hold every row, so tighten them.
            if current.stat().st_mode & 0o777 != DIR_MODE:
                current.chmod(DIR_MODE)
            if current in (self.root, current.parent):
                break
            current = current.parent
        return path

    def partial_path(self, final: Path) -> Path:
        """Return the temporary name a file is written under before its rename."""
        return final.with_name(f".{final.name}.{os.getpid()}{PARTIAL_SUFFIX}")

    def files(self, kind: Kind, database: str | None = None) -> list[BackupFile]:
        """List the backups of one kind, oldest first, for one or every database."""
        base = self.root / kind.value
        if database is not None:
            directories = [self.directory(kind, database)]
        elif base.is_dir():
            directories = sorted(p for p in base.iterdir() if p.is_dir())
        else:
            directories = []
        found: list[BackupFile] = []
        for directory in directories:
            found.extend(self._scan(directory, kind))
        found.sort(key=lambda item: (item.database, item.time))
        return found

    def _scan(self, directory: Path, kind: Kind) -> list[BackupFile]:
        if not directory.is_dir():
            return []
        found = []
        for path in directory.iterdir():
            match = FILE_PATTERN.match(path.name)
            # The name must repeat its directory, so a file copied in from
            # another database's directory is not taken for this one's.
            if match is None or match["name"] != directory.name:
                continue
            if path.is_symlink() or not path.is_file():
                continue
            found.append(
                BackupFile(
                    path=path,
                    database=unquote(directory.name),
                    kind=kind,
                    time=parse_stamp(match["stamp"]),
                    extension=match["ext"],
                )
            )
        return found

    def databases(self) -> list[str]:
        """Return every database that has a directory of backups."""
        names: set[str] = set()
        for kind in Kind:
            base = self.root / kind.value
            if base.is_dir():
                names.update(unquote(p.name) for p in base.iterdir() if p.is_dir())
        return sorted(names)

    def globals_files(self) -> list[BackupFile]:
        """List the globals dumps, oldest first."""
        directory = self.globals_dir
        if not directory.is_dir():
            return []
        found = []
        for path in directory.iterdir():
            match = FILE_PATTERN.match(path.name)
            if match is None or match["name"] != GLOBALS or not path.is_file():
                continue
            found.append(
                BackupFile(
                    path=path,
                    database=GLOBALS,
                    kind=None,
                    time=parse_stamp(match["stamp"]),
                    extension=match["ext"],
                )
            )
        found.sort(key=lambda item: item.time)
        return found

    def remove_partials(self) -> list[Path]:
        """Delete temporary files a killed run left behind; return their paths.

        Call only while holding the run lock, because a running dump's own
        temporary file has the same form.
        """
        removed = []
        candidates = [self.globals_dir]
        for kind in Kind:
            base = self.root / kind.value
            if base.is_dir():
                candidates.extend(p for p in base.iterdir() if p.is_dir())
        for directory in candidates:
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                if PARTIAL_PATTERN.match(path.name) and not path.is_dir():
                    path.unlink(missing_ok=True)
                    removed.append(path)
                    logger.warning(
                        "Removed a temporary file left by an interrupted backup",
                        extra={"event": "partial_removed", "path": str(path)},
                    )
        return removed

    def add_snapshot(self, source: BackupFile, kind: Kind) -> Path:
        """Hard-link a daily backup into the weekly or monthly directory."""
        directory = self.ensure_dir(self.directory(kind, source.database))
        target = directory / source.path.name
        if not target.exists():
            os.link(source.path, target)
            fsync_dir(directory)
        return target

    def point_latest(self, backup: BackupFile) -> Path:
        """Replace the ``latest`` symlink of a database so it names ``backup``."""
        directory = backup.path.parent
        link = directory / LATEST
        temporary = directory / f".{LATEST}.{os.getpid()}{PARTIAL_SUFFIX}"
        temporary.unlink(missing_ok=True)
        # A relative target keeps the link valid when BACKUP_DIR is mounted
        # elsewhere, such as on a restore host.
        temporary.symlink_to(backup.path.name)
        os.replace(temporary, link)
        fsync_dir(directory)
        return link


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry change, such as a rename, to disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
