"""Dump one database, verify the file, and only then give it its final name.

Each dump is written to a hidden ``.NAME.PID.partial`` file in its target
directory. pg_dump's exit status and stderr are checked, the file must be
non-empty and must read back (``pg_restore --list`` for the custom format, a
full decompression for plain), and it is flushed to disk before the rename.
Any failure, or a cancelled run, deletes the partial file and leaves every
older backup alone.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from handlers.backup.errors import BackupError
from handlers.backup.layout import (
    FILE_MODE,
    BackupFile,
    Kind,
    Layout,
    extension,
    fsync_dir,
    fsync_file,
)
from handlers.backup.postgres import (
    Connection,
    DatabaseInfo,
    database_info,
    find_program,
    free_bytes,
    program_major,
    run_program,
    tail,
)

logger = logging.getLogger(__name__)

PLAIN_TRAILER = b"-- PostgreSQL database dump complete"
GLOBALS_TRAILER = b"-- PostgreSQL database cluster dump complete"
_READ_CHUNK = 1024 * 1024
_TRAILER_WINDOW = 4096


class Dumper:
    """Run pg_dump and pg_dumpall into verified files under a :class:`Layout`."""

    def __init__(
        self,
        layout: Layout,
        connection: Connection,
        backup_format: str,
        compression_level: int,
    ) -> None:
        self.layout = layout
        self.connection = connection
        self.format = backup_format
        self.compression_level = compression_level
        self._pg_dump_major: int | None = None

    def reset(self) -> None:
        """Forget the pg_dump version, so an upgraded client is noticed."""
        self._pg_dump_major = None

    async def pg_dump_major(self) -> int:
        if self._pg_dump_major is None:
            self._pg_dump_major = await program_major("pg_dump", self.connection)
        return self._pg_dump_major

    async def check(self, database: str) -> DatabaseInfo:
        """Connect, then fail early on an older pg_dump or too little free space."""
        info = await database_info(self.connection, database)
        client = await self.pg_dump_major()
        if client < info.server_major:
            raise BackupError(
                "version_check",
                f"pg_dump {client} is older than the server ({info.server_major}) "
                f"and cannot dump it; install postgresql-client-{info.server_major}",
            )
        directory = self.layout.ensure_dir(self.layout.directory(Kind.DAILY, database))
        free = free_bytes(directory)
        # NOTE: the database size is an upper estimate. A compressed dump is
        # usually much smaller, but a dump of incompressible data in plain
        # text can still exceed it, which the pg_dump step then reports.
        if free < info.size_bytes:
            raise BackupError(
                "space_check",
                f"database {database!r} is {info.size_bytes} bytes "
                f"(pg_database_size) but only {free} bytes are free in {directory}; "
                "free space or point BACKUP_DIR at a larger volume",
            )
        return info

    async def dump(self, database: str, moment: datetime) -> BackupFile:
        """Dump ``database`` into ``daily/``; return the verified file."""
        await self.check(database)
        directory = self.layout.directory(Kind.DAILY, database)
        ext = extension(self.format, self.compression_level)
        final, moment = _free_name(
            lambda m: directory / self.layout.file_name(database, m, ext), moment
        )
        partial = self.layout.partial_path(final)
        argv = [
            find_program("pg_dump"),
            "--no-password",
            f"--format={self.format}",
            f"--file={partial}",
        ]
        if self.format == "custom" or self.compression_level > 0:
            argv.append(f"--compress={self.compression_level}")
        await self._write(
            argv,
            self.connection.env(database),
            partial,
            final,
            database,
            step="pg_dump",
        )
        return BackupFile(final, database, Kind.DAILY, moment, ext)

    async def dump_globals(self, moment: datetime) -> BackupFile:
        """Dump roles and tablespaces with ``pg_dumpall --globals-only``."""
        directory = self.layout.ensure_dir(self.layout.globals_dir)
        final, moment = _free_name(
            lambda m: directory / self.layout.globals_name(m), moment
        )
        partial = self.layout.partial_path(final)
        argv = [
            find_program("pg_dumpall"),
            "--no-password",
            "--globals-only",
            f"--file={partial}",
        ]
        await self._write(
            argv, self.connection.env(), partial, final, "globals", step="pg_dumpall"
        )
        return BackupFile(final, "globals", None, moment, "sql")

    async def _write(
        self,
        argv: list[str],
        env: dict[str, str],
        partial: Path,
        final: Path,
        database: str,
        *,
        step: str,
    ) -> None:
        # Created here with mode 0600 so the dump is never readable by others,
        # even for a moment; pg_dump truncates it and keeps the mode.
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.close(descriptor)
        try:
            await self._run_and_verify(argv, env, partial, final, database, step)
            fsync_file(partial)
            os.replace(partial, final)
            fsync_dir(final.parent)
        except asyncio.CancelledError:
            _discard(partial)
            logger.warning(
                "Backup abandoned; removed its partial file",
                extra={
                    "event": "backup_abandoned",
                    "database": database,
                    "path": str(partial),
                },
            )
            raise
        except OSError as exc:
            _discard(partial)
            raise BackupError(
                "write", f"writing {final.name} failed: {exc.strerror}"
            ) from exc
        except BaseException:
            _discard(partial)
            raise

    async def _run_and_verify(
        self,
        argv: list[str],
        env: dict[str, str],
        partial: Path,
        final: Path,
        database: str,
        step: str,
    ) -> None:
        program = Path(argv[0]).name
        logger.info(
            "%s started",
            program,
            extra={"event": "dump_started", "database": database, "path": str(partial)},
        )
        result = await run_program(argv, env)
        if result.returncode != 0:
            raise BackupError(
                step,
                f"{program} failed with exit status {result.returncode}",
                tail(result.stderr),
            )
        # pg_dump can report an error and still exit 0 in a few paths, such as
        # a failed close of the output file on some versions.
        if "error:" in result.stderr:
            raise BackupError(
                step, f"{program} reported an error on stderr", tail(result.stderr)
            )
        if result.stderr.strip():
            logger.warning(
                "%s wrote warnings",
                program,
                extra={
                    "event": "dump_warnings",
                    "database": database,
                    "stderr": tail(result.stderr),
                },
            )
        if os.stat(partial).st_size == 0:
            raise BackupError("verify", f"{program} wrote an empty file")
        await verify(partial, env, final.name)


async def verify(path: Path, env: dict[str, str], name: str | None = None) -> None:
    """Read a backup file back completely; raise :class:`BackupError` if it is damaged.

    ``name`` is the file's final name when ``path`` is still the partial file;
    its extension selects the check.
    """
    name = name or path.name
    if name.endswith(".dump"):
        result = await run_program(
            [find_program("pg_restore"), "--list", str(path)], env
        )
        if result.returncode != 0 or not result.stdout.strip():
            raise BackupError(
                "verify",
                f"pg_restore --list could not read {path.name} "
                f"(exit status {result.returncode})",
                tail(result.stderr),
            )
        return
    await asyncio.to_thread(_verify_text, path, name)


def _verify_text(path: Path, name: str) -> None:
    is_gzip = name.endswith(".gz")
    trailer = GLOBALS_TRAILER if name.startswith("globals_") else PLAIN_TRAILER
    last = b""
    try:
        with gzip.open(path, "rb") if is_gzip else path.open("rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                last = (last + chunk)[-_TRAILER_WINDOW:]
    except (OSError, EOFError, zlib.error) as exc:
        raise BackupError("verify", f"{path.name} does not read back: {exc}") from exc
    if trailer not in last:
        raise BackupError(
            "verify",
            f"{path.name} is incomplete: the closing line of the dump is missing",
        )


def _free_name(
    make: Callable[[datetime], Path], moment: datetime
) -> tuple[Path, datetime]:
    # Two runs within one second would share a name; the later one moves on a
    # second so it never replaces a verified file.
    path = make(moment)
    for _ in range(60):
        path = make(moment)
        if not path.exists():
            return path, moment
        moment += timedelta(seconds=1)
    raise BackupError("write", f"no free file name near {path.name}")


def _discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
