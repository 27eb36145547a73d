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
directory. Only regular files that match :data:`FILE_PATTERN` are backups:
anything else in these directories, symbolic links included, is never listed,
counted or deleted.

The worker creates every directory below BACKUP_DIR itself and follows no
symbolic link there, so a planted link cannot make it write, change modes or
delete outside BACKUP_DIR. BACKUP_DIR itself may be a link.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote, unquote

from handlers.backup.errors import SymlinkError

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

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


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


@dataclass(frozen=True, slots=True)
class _Entry:
    """A directory entry, typed without following a symbolic link."""

    name: str
    is_dir: bool
    is_file: bool
    is_symlink: bool


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
        """Create ``path`` and its parents under the root with mode 0700.

        Raises :class:`SymlinkError` when a directory below the root is a
        symbolic link, and leaves what it names untouched.
        """
        # NOTE: callers then write into ``path`` by name, so a link swapped in
        # after this check is still followed; only one already there is caught.
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        with self._open_directory(path, create=True):
            pass
        return path

    @contextlib.contextmanager
    def _open_directory(self, path: Path, *, create: bool = False) -> Iterator[int]:
        """Open ``path`` one level at a time from the root, following no link below it.

        With ``create``, missing directories are made, and every directory
        from the root down to ``path`` gets mode 0700.
        """
        descriptor = os.open(self.root, _DIRECTORY_FLAGS)
        try:
            if create:
                _tighten(descriptor)
            current = self.root
            for part in path.relative_to(self.root).parts:
                current = current / part
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, DIR_MODE, dir_fd=descriptor)
                child = _open_child(descriptor, part, current)
                os.close(descriptor)
                descriptor = child
                if create:
                    _tighten(descriptor)
            yield descriptor
        finally:
            os.close(descriptor)

    def _entries(self, directory: Path) -> list[_Entry]:
        """List ``directory``: empty when missing, and a link is logged and skipped."""
        try:
            with (
                self._open_directory(directory) as descriptor,
                os.scandir(descriptor) as scan,
            ):
                return [
                    _Entry(
                        entry.name,
                        entry.is_dir(follow_symlinks=False),
                        entry.is_file(follow_symlinks=False),
                        entry.is_symlink(),
                    )
                    for entry in scan
                ]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except SymlinkError as exc:
            _log_skipped(exc)
            return []

    def _subdirectories(self, base: Path) -> list[Path]:
        """Return the directories in ``base``, sorted; a link is logged and skipped."""
        found = []
        for entry in self._entries(base):
            if entry.is_symlink:
                _log_skipped(SymlinkError(str(base / entry.name)))
            elif entry.is_dir:
                found.append(base / entry.name)
        return sorted(found)

    def remove_file(self, path: Path) -> None:
        """Delete a file below the root without following a link to its directory."""
        with self._open_directory(path.parent) as descriptor:
            os.unlink(path.name, dir_fd=descriptor)
            os.fsync(descriptor)

    def partial_path(self, final: Path) -> Path:
        """Return the temporary name a file is written under before its rename."""
        return final.with_name(f".{final.name}.{os.getpid()}{PARTIAL_SUFFIX}")

    def files(self, kind: Kind, database: str | None = None) -> list[BackupFile]:
        """List the backups of one kind, oldest first, for one or every database."""
        base = self.root / kind.value
        if database is not None:
            directories = [self.directory(kind, database)]
        else:
            directories = self._subdirectories(base)
        found: list[BackupFile] = []
        for directory in directories:
            found.extend(self._scan(directory, kind))
        found.sort(key=lambda item: (item.database, item.time))
        return found

    def _scan(self, directory: Path, kind: Kind) -> list[BackupFile]:
        found = []
        for entry in self._entries(directory):
            match = FILE_PATTERN.match(entry.name)
            # The name must repeat its directory, so a file copied in from
            # another database's directory is not taken for this one's.
            if match is None or match["name"] != directory.name:
                continue
            # A link is never a backup: verifying or restoring it would read
            # whatever file it names.
            if not entry.is_file:
                continue
            found.append(
                BackupFile(
                    path=directory / entry.name,
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
            directories = self._subdirectories(self.root / kind.value)
            names.update(unquote(directory.name) for directory in directories)
        return sorted(names)

    def globals_files(self) -> list[BackupFile]:
        """List the globals dumps, oldest first."""
        directory = self.globals_dir
        found = []
        for entry in self._entries(directory):
            match = FILE_PATTERN.match(entry.name)
            if match is None or match["name"] != GLOBALS or not entry.is_file:
                continue
            found.append(
                BackupFile(
                    path=directory / entry.name,
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
        directories = [self.globals_dir]
        for kind in Kind:
            directories.extend(self._subdirectories(self.root / kind.value))
        removed = []
        for directory in directories:
            for entry in self._entries(directory):
                # The temporary ``latest`` link is a partial file too, and
                # deleting a link never touches what it names.
                if not PARTIAL_PATTERN.match(entry.name) or entry.is_dir:
                    continue
                path = directory / entry.name
                with contextlib.suppress(FileNotFoundError):
                    self.remove_file(path)
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


def _open_child(parent: int, name: str, path: Path) -> int:
    """Open directory ``name`` inside the open directory ``parent``, never a link."""
    try:
        return os.open(name, _DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        # Linux reports a link opened with O_DIRECTORY | O_NOFOLLOW as
        # ENOTDIR, the same as a regular file, so lstat distinguishes them.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
                    raise SymlinkError(str(path)) from exc
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _log_skipped(error: SymlinkError) -> None:
    logger.warning(
        "Skipped a directory: %s",
        error.message,
        extra={"event": "symlink_skipped", "path": error.path},
    )


def _tighten(descriptor: int) -> None:
    # mkdir's mode is reduced by the umask; directories made earlier by hand
    # may be wider. Backups hold every row, so tighten them.
    if os.fstat(descriptor).st_mode & 0o777 != DIR_MODE:
        os.fchmod(descriptor, DIR_MODE)


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
