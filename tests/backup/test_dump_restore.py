"""Backup and restore round trips through the real pg_dump, pg_restore and psql."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.backup.conftest import Postgres
from tests.support.pushgateway import read_samples
from tests.support.slack import SlackReceiver
from tests.support.waiting import wait_for

pytestmark = pytest.mark.postgres

Cli = Callable[..., subprocess.CompletedProcess[str]]

SCHEMA = """
CREATE TABLE customer (id serial PRIMARY KEY, name text NOT NULL, joined date);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int REFERENCES customer (id),
    amount numeric(10, 2),
    note text
);
CREATE SEQUENCE invoice_number START 1000 INCREMENT 7;
CREATE VIEW big_orders AS
    SELECT c.name, o.amount FROM orders o JOIN customer c ON c.id = o.customer_id
    WHERE o.amount > 50;
INSERT INTO customer (name, joined)
    SELECT 'customer ' || g, DATE '2024-01-01' + g FROM generate_series(1, 40) g;
INSERT INTO orders (customer_id, amount, note)
    SELECT 1 + g % 40, (g * 3.7)::numeric(10, 2), CASE WHEN g % 5 = 0 THEN NULL
        ELSE E'line\\twith tab ' || g END
    FROM generate_series(1, 300) g;
SELECT nextval('invoice_number') FROM generate_series(1, 3);
SELECT lo_from_bytea(0, convert_to(repeat('large object payload ', 500), 'UTF8'));
"""

CONTENT_QUERIES = {
    "customer": "SELECT string_agg(format('%s|%s|%s', id, name, joined), ',' "
    "ORDER BY id) FROM customer",
    "orders": "SELECT string_agg(format('%s|%s|%s|%s', id, customer_id, amount, "
    "note), ',' ORDER BY id) FROM orders",
    "customer_seq": "SELECT last_value || ' ' || is_called FROM customer_id_seq",
    "invoice_number": "SELECT last_value || ' ' || is_called FROM invoice_number",
    "view": "SELECT pg_get_viewdef('big_orders'::regclass)",
    "view_rows": "SELECT count(*) || ' ' || sum(amount) FROM big_orders",
    "large_objects": "SELECT string_agg(oid || ':' || md5(lo_get(oid)), ',' "
    "ORDER BY oid) FROM pg_largeobject_metadata",
    "identity_next": "SELECT pg_get_serial_sequence('orders', 'id') IS NOT NULL",
}


def contents(pg: Postgres, database: str) -> dict[str, str]:
    return {name: pg.psql(database, sql) for name, sql in CONTENT_QUERIES.items()}


def attachment_titles(slack: SlackReceiver) -> list[str]:
    return [str(item.get("title", "")) for item in slack.attachments()]


def test_custom_backup_restores_equal(
    pg: Postgres,
    backup_cli: Cli,
    backup_dir: Path,
    slack: SlackReceiver,
    pushgateway_url: str,
    prefix: str,
) -> None:
    source = pg.create_database("src")
    pg.psql(source, SCHEMA)
    expected = contents(pg, source)
    assert expected["large_objects"].count(":") == 1
    assert expected["invoice_number"] == "1014 true"

    result = backup_cli("backup", "now", BACKUP_DATABASES=source)
    assert result.returncode == 0, result.stdout + result.stderr

    directory = backup_dir / "daily" / source
    files = sorted(p.name for p in directory.iterdir() if not p.is_symlink())
    assert len(files) == 1
    assert files[0].startswith(f"{source}_")
    assert files[0].endswith(".dump")
    dump = directory / files[0]
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((backup_dir / "daily").stat().st_mode) == 0o700
    assert (directory / "latest").readlink() == Path(files[0])

    target = f"{source}_restored"
    pg.adopt(target)
    restored = backup_cli(
        "backup", "restore", str(directory / "latest"), "--dbname", target
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert contents(pg, target) == expected

    wait_for(
        lambda: (
            f":large_green_circle: Backup of {source} succeeded"
            in attachment_titles(slack)
        ),
        what="the success alert",
    )
    success = read_samples(
        pushgateway_url, "backup_last_status", instance=prefix, database=source
    )
    assert success == {"": 1.0}
    size = read_samples(
        pushgateway_url, "backup_last_size_bytes", instance=prefix, database=source
    )
    assert size == {"": float(dump.stat().st_size)}


def test_restore_rejects_non_empty_target(
    pg: Postgres, backup_cli: Cli, backup_dir: Path
) -> None:
    source = pg.create_database("src")
    pg.psql(source, SCHEMA)
    expected = contents(pg, source)
    assert backup_cli("backup", "now", BACKUP_DATABASES=source).returncode == 0
    latest = backup_dir / "daily" / source / "latest"

    target = pg.create_database("busy")
    pg.psql(target, "CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (7)")
    rejected = backup_cli("backup", "restore", str(latest), "--dbname", target)
    assert rejected.returncode == 1
    assert "is not empty" in rejected.stderr
    assert "--clean" in rejected.stderr
    assert pg.psql(target, "SELECT id FROM keep_me") == "7"

    cleaned = backup_cli(
        "backup", "restore", str(latest), "--dbname", target, "--clean"
    )
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert contents(pg, target) == expected
    assert pg.psql(target, "SELECT to_regclass('keep_me') IS NULL") == "t"


def test_plain_format_writes_gzip_and_restores(
    pg: Postgres, backup_cli: Cli, backup_dir: Path
) -> None:
    source = pg.create_database("plain")
    pg.psql(source, SCHEMA)
    expected = contents(pg, source)

    result = backup_cli(
        "backup",
        "now",
        BACKUP_DATABASES=source,
        BACKUP_FORMAT="plain",
        BACKUP_COMPRESSION_LEVEL="6",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    directory = backup_dir / "daily" / source
    files = [p for p in directory.iterdir() if not p.is_symlink()]
    assert len(files) == 1
    assert files[0].name.endswith(".sql.gz")
    assert files[0].read_bytes()[:2] == b"\x1f\x8b"

    target = f"{source}_restored"
    pg.adopt(target)
    restored = backup_cli("backup", "restore", str(files[0]), "--dbname", target)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert contents(pg, target) == expected


def test_globals_dumped_and_listed(
    pg: Postgres, backup_cli: Cli, backup_dir: Path
) -> None:
    source = pg.create_database("glob")
    result = backup_cli("backup", "now", BACKUP_DATABASES=source, BACKUP_GLOBALS="true")
    assert result.returncode == 0, result.stdout + result.stderr
    globals_files = list((backup_dir / "globals").iterdir())
    assert len(globals_files) == 1
    text = globals_files[0].read_text()
    assert "CREATE ROLE postgres;" in text
    assert stat.S_IMODE(globals_files[0].stat().st_mode) == 0o600

    listing = backup_cli("backup", "list")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["DATABASE", "KIND", "TIME", "SIZE", "VERIFIED", "FILE"]
    rows = [line.split() for line in lines[1:]]
    assert [(row[0], row[1]) for row in rows] == [
        (source, "daily"),
        ("globals", "globals"),
    ]
    assert all(row[-2] == "-" for row in rows)

    verified = backup_cli("backup", "list", "--verify")
    assert verified.returncode == 0
    assert [line.split()[-2] for line in verified.stdout.splitlines()[1:]] == [
        "yes",
        "yes",
    ]


def test_list_verify_flags_damaged_file(
    pg: Postgres, backup_cli: Cli, backup_dir: Path
) -> None:
    source = pg.create_database("damaged")
    pg.psql(source, SCHEMA)
    assert backup_cli("backup", "now", BACKUP_DATABASES=source).returncode == 0
    dump = (backup_dir / "daily" / source / "latest").resolve()
    data = dump.read_bytes()
    dump.write_bytes(data[: len(data) // 2])

    verified = backup_cli("backup", "list", "--verify")
    assert verified.returncode == 1
    assert "FAILED" in verified.stdout


def test_list_marks_unread_files_unchecked(backup_cli: Cli, backup_dir: Path) -> None:
    directory = backup_dir / "daily" / "shop"
    directory.mkdir(parents=True)
    garbage = directory / "shop_20261204T020000Z.dump"
    garbage.write_bytes(b"not a pg_dump archive")

    listing = backup_cli("backup", "list")
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()[1:]]
    assert len(rows) == 1
    assert rows[0][-1] == str(garbage)
    assert rows[0][-2] == "-"

    verified = backup_cli("backup", "list", "--verify")
    assert verified.returncode == 1
    verified_rows = [line.split() for line in verified.stdout.splitlines()[1:]]
    assert verified_rows[0][-2] == "FAILED"
