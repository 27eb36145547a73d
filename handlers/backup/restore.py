"""Restore a backup file into a database, and roles from a globals file on request."""

from __future__ import annotations

import asyncio
import gzip
import logging
import subprocess
from pathlib import Path
from typing import BinaryIO

from handlers.backup.dump import verify
from handlers.backup.errors import BackupError
from handlers.backup.layout import FILE_PATTERN, Layout
from handlers.backup.postgres import (
    MAINTENANCE_DATABASES,
    Connection,
    conninfo_dbname,
    database_exists,
    find_program,
    query,
    quote_ident,
    run_program,
    tail,
)

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024

# Objects a restore would collide with: relations, functions and large
# objects outside the system schemas.
_OBJECT_COUNT = """
SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%')
     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
     + (SELECT count(*) FROM pg_largeobject_metadata)
"""


async def _maintenance_query(connection: Connection, sql: str, step: str) -> None:
    error: BackupError | None = None
    for database in MAINTENANCE_DATABASES:
        try:
            await query(connection, database, sql, step=step)
        except BackupError as exc:
            error = exc
            # Only a failed connection is worth another maintenance database.
            if "connection to server" not in exc.stderr:
                raise
            continue
        return
    raise error or BackupError(step, "no maintenance database to query")


async def _database_exists(connection: Connection, database: str) -> bool:
    exists = await database_exists(connection, database)
    if exists is None:
        raise BackupError(
            "connect", "cannot connect to the postgres or template1 database"
        )
    return exists


def find_globals(layout: Layout, backup: Path) -> Path:
    """Return the newest globals file taken no later than ``backup``."""
    match = FILE_PATTERN.match(backup.name)
    candidates = layout.globals_files()
    if match is not None:
        candidates = [c for c in candidates if c.stamp <= match["stamp"]]
    if not candidates:
        raise BackupError(
            "restore_globals",
            f"no globals file in {layout.globals_dir} taken before {backup.name}; "
            "pass the file with --globals FILE",
        )
    return candidates[-1].path


async def restore(
    connection: Connection,
    source: Path,
    target: str,
    *,
    clean: bool = False,
    globals_file: Path | None = None,
) -> None:
    """Restore ``source`` into database ``target``.

    A target that exists and contains objects is rejected unless ``clean`` is set;
    then it is dropped and created again from template0.
    """
    path = await asyncio.to_thread(source.resolve)
    if not await asyncio.to_thread(path.is_file):
        raise BackupError("restore", f"backup file {source} not found")
    name = path.name
    if not (name.endswith((".dump", ".sql.gz", ".sql"))):
        raise BackupError(
            "restore", f"{name} is not a backup file (.dump, .sql.gz or .sql)"
        )
    await verify(path, connection.env())

    if await _database_exists(connection, target):
        rows = await query(connection, target, _OBJECT_COUNT)
        objects = int(rows[0][0])
        if objects and not clean:
            raise BackupError(
                "restore",
                f"target database {target!r} is not empty ({objects} objects); "
                "pass --clean to drop and recreate it, or choose a new --dbname",
            )
        if clean:
            logger.warning(
                "Dropping the target database before the restore",
                extra={"event": "restore_drop", "database": target},
            )
            await _maintenance_query(
                connection, f"DROP DATABASE {quote_ident(target)}", "restore"
            )
            await _create(connection, target)
    else:
        await _create(connection, target)

    if globals_file is not None:
        await _restore_globals(connection, globals_file)

    logger.info(
        "Restore started",
        extra={"event": "restore_started", "database": target, "path": str(path)},
    )
    if name.endswith(".dump"):
        result = await run_program(
            [
                find_program("pg_restore"),
                "--no-password",
                "--exit-on-error",
                f"--dbname={conninfo_dbname(target)}",
                str(path),
            ],
            connection.env(),
        )
        returncode, stderr = result.returncode, result.stderr
    else:
        returncode, stderr = await _psql_from_file(connection, target, path)
    if returncode != 0:
        raise BackupError(
            "restore",
            f"restoring {name} into {target!r} failed with exit status {returncode}",
            tail(stderr),
        )
    logger.info(
        "Restore finished",
        extra={"event": "restore_finished", "database": target, "path": str(path)},
    )


async def _create(connection: Connection, target: str) -> None:
    logger.info(
        "Creating the target database",
        extra={"event": "restore_create", "database": target},
    )
    await _maintenance_query(
        connection,
        f"CREATE DATABASE {quote_ident(target)} TEMPLATE template0",
        "restore",
    )


async def _restore_globals(connection: Connection, path: Path) -> None:
    # Without ON_ERROR_STOP: roles that already exist report an error each,
    # and the remaining statements should still run.
    result = await run_program(
        [
            find_program("psql"),
            "--no-psqlrc",
            "--no-password",
            "--quiet",
            f"--file={path}",
        ],
        connection.env("postgres"),
    )
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    logger.log(
        logging.WARNING if errors or result.returncode else logging.INFO,
        "Globals restored",
        extra={
            "event": "restore_globals",
            "path": str(path),
            "errors": len(errors),
            "stderr": tail(result.stderr),
        },
    )
    if result.returncode != 0:
        raise BackupError(
            "restore_globals",
            f"psql failed with exit status {result.returncode} on {path.name}",
            tail(result.stderr),
        )


async def _psql_from_file(
    connection: Connection, target: str, path: Path
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        find_program("psql"),
        "--no-psqlrc",
        "--no-password",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        env=connection.env(target),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if process.stdin is None or process.stderr is None:
        raise BackupError("restore", "psql was started without pipes")
    stderr_task = asyncio.create_task(process.stderr.read())
    try:
        with _open_dump(path) as handle:
            while chunk := handle.read(_CHUNK):
                process.stdin.write(chunk)
                await process.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        # psql stopped at the first error; its status and stderr tell why.
        pass
    finally:
        process.stdin.close()
    returncode = await process.wait()
    stderr = (await stderr_task).decode(errors="replace")
    return returncode, stderr


def _open_dump(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")
