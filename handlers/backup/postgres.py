"""Run the PostgreSQL client programs with the worker's connection settings.

The password reaches every program through ``PGPASSWORD`` in the child's
environment, never its command line, where ``ps`` would show it. Database
names go through ``PGDATABASE`` or a quoted conninfo string, because a name
given as an argument is parsed as a connection string when it contains ``=``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from handlers.backup.errors import BackupError

logger = logging.getLogger(__name__)

STDERR_TAIL_LINES = 12
CONNECT_TIMEOUT_SECONDS = 15
MAINTENANCE_DATABASES = ("postgres", "template1")

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


@dataclass(frozen=True, slots=True)
class Connection:
    """libpq connection settings shared by every client program."""

    host: str
    port: int
    user: str
    password: str = ""

    def env(self, database: str | None = None) -> dict[str, str]:
        """Return the complete environment for a client program."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_SECONDS),
            "PGAPPNAME": "molochain-backup",
            # English messages, so the alerts and the stderr checks read the same
            # on every host.
            "LC_ALL": "C.UTF-8",
            "LC_MESSAGES": "C",
        }
        if self.password:
            env["PGPASSWORD"] = self.password
        if database is not None:
            env["PGDATABASE"] = database
        return env


def conninfo_dbname(database: str) -> str:
    """Quote a database name as a conninfo ``dbname='...'`` string."""
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def quote_ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote an SQL string literal (standard_conforming_strings on)."""
    return "'" + value.replace("'", "''") + "'"


def tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    """Return the last non-empty lines of a program's output."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def find_program(name: str) -> str:
    """Return the absolute path of a client program; raise when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            "setup",
            f"{name} not found on PATH; install the PostgreSQL client "
            "(postgresql-client)",
        )
    return path


def _guard(argv: Sequence[str]) -> list[str]:
    # Ask the kernel to stop the child when this process dies, so a worker
    # killed with SIGKILL leaves no pg_dump writing behind it.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished client program: exit status and captured output."""

    returncode: int
    stdout: str
    stderr: str


async def run_program(
    argv: Sequence[str],
    env: dict[str, str],
    *,
    stdin: int | None = subprocess.DEVNULL,
    input_data: bytes | None = None,
) -> Completed:
    """Run a client program to the end; terminate it when the caller is cancelled."""
    process = await asyncio.create_subprocess_exec(
        *_guard(argv),
        env=env,
        stdin=subprocess.PIPE if input_data is not None else stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await process.communicate(input_data)
    except asyncio.CancelledError:
        await stop_process(process)
        raise
    return Completed(
        process.returncode if process.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """Terminate a child and wait for it; kill it if it ignores SIGTERM."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout=10)
    except TimeoutError:
        process.kill()
        await process.wait()
    logger.warning(
        "Stopped a PostgreSQL client program",
        extra={"event": "program_stopped", "pid": process.pid},
    )


async def query(
    connection: Connection, database: str, sql: str, *, step: str = "connect"
) -> list[list[str]]:
    """Run one SQL statement with psql and return its rows of text fields."""
    psql = find_program("psql")
    result = await run_program(
        [
            psql,
            "--no-psqlrc",
            "--no-password",
            "--tuples-only",
            "--no-align",
            "--field-separator=\x1f",
            "--set=ON_ERROR_STOP=1",
            "--command",
            sql,
        ],
        connection.env(database),
    )
    if result.returncode != 0:
        raise BackupError(
            step,
            f"psql failed with exit status {result.returncode} "
            f"on database {database!r}",
            tail(result.stderr),
        )
    return [line.split("\x1f") for line in result.stdout.splitlines() if line]


async def list_databases(connection: Connection) -> list[str]:
    """Return every database PGUSER may connect to, templates excluded."""
    sql = (
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
        " AND has_database_privilege(datname, 'CONNECT') ORDER BY datname"
    )
    error: BackupError | None = None
    for maintenance in MAINTENANCE_DATABASES:
        try:
            rows = await query(connection, maintenance, sql, step="list_databases")
        except BackupError as exc:
            error = exc
            continue
        return [row[0] for row in rows]
    raise error or BackupError("list_databases", "no maintenance database to query")


async def database_exists(connection: Connection, database: str) -> bool | None:
    """Tell whether pg_database lists ``database``; None when no query succeeds."""
    # The name is quoted as a literal, so it cannot change the statement.
    literal = quote_literal(database)
    sql = f"SELECT count(*) FROM pg_database WHERE datname = {literal}"  # noqa: S608
    for maintenance in MAINTENANCE_DATABASES:
        try:
            rows = await query(connection, maintenance, sql)
        except BackupError:
            continue
        return rows[0][0] != "0"
    return None


def parse_major(version_output: str) -> int:
    """Return the major version from ``pg_dump --version`` style output."""
    match = _VERSION.search(version_output)
    if match is None:
        raise ValueError(f"no version number in {version_output!r}")
    return int(match.group(1))


async def program_major(program: str, connection: Connection) -> int:
    """Return the major version of a client program such as pg_dump."""
    result = await run_program([find_program(program), "--version"], connection.env())
    if result.returncode != 0:
        raise BackupError(
            "version_check",
            f"{program} --version failed with exit status {result.returncode}",
            tail(result.stderr),
        )
    return parse_major(result.stdout)


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """Server version and size of a database, read by the checks before a dump."""

    server_version_num: int
    size_bytes: int

    @property
    def server_major(self) -> int:
        # server_version_num is 150004 for 15.4; 90624 for 9.6.24.
        if self.server_version_num >= 100000:
            return self.server_version_num // 10000
        return self.server_version_num // 100


async def database_info(connection: Connection, database: str) -> DatabaseInfo:
    """Connect to ``database`` and read the server version and the database size."""
    rows = await query(
        connection,
        database,
        "SELECT current_setting('server_version_num'),"
        " pg_database_size(current_database())",
    )
    version, size = rows[0]
    return DatabaseInfo(int(version), int(size))


def free_bytes(directory: Path) -> int:
    """Return the bytes an unprivileged writer may still use in ``directory``."""
    return shutil.disk_usage(directory).free
