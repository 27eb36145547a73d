"""Backups: ``molochain-workers backup now`` against a bare pg_dump.

It creates a pgbench database of ``--scale`` (70 is about 1 GiB) and a small
one of scale 1 on the test PostgreSQL server, then:

* runs ``backup now --database NAME`` and a bare ``pg_dump`` with the same
  options (``--format=custom --compress=LEVEL --file=...``) in alternating
  runs, each under ``/usr/bin/time -v`` (wall time, and the peak resident set
  of the largest process in the tree, which is pg_dump or pg_restore). The
  worker's own Python process is sampled for VmHWM every 20 ms as well;
* runs ``backup now`` once per compression level for the size table;
* runs ``backup now`` on the small database to show whether the worker's
  memory depends on the database's size.

The worker's time includes what a bare pg_dump does not do: the connection,
version and free-space checks, reading the file back with
``pg_restore --list``, and the fsyncs before the rename. Both databases are
dropped at the end.

Run: ``.venv/bin/python -m bench.backup`` (options: ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    REPO_ROOT,
    load_average,
    print_table,
    process_memory_kib,
    service_env,
    summarise,
    write_results,
)
from tests.support.worker import EXECUTABLE

PGUSER = "postgres"


def psql(services: dict[str, str], sql: str, database: str = "postgres") -> str:
    result = subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-At",
            "-h",
            services.get("MOLO_TEST_PGHOST", "127.0.0.1"),
            "-p",
            services.get("MOLO_TEST_PGPORT", "5432"),
            "-U",
            PGUSER,
            "-d",
            database,
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def create_database(services: dict[str, str], name: str, scale: int) -> int:
    """Create ``name`` filled by ``pgbench -i``; return its size in bytes."""
    psql(services, f'CREATE DATABASE "{name}"')
    subprocess.run(
        [
            "pgbench",
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            services.get("MOLO_TEST_PGHOST", "127.0.0.1"),
            "-p",
            services.get("MOLO_TEST_PGPORT", "5432"),
            "-U",
            PGUSER,
            name,
        ],
        check=True,
        capture_output=True,
    )
    return int(psql(services, f"SELECT pg_database_size('{name}')"))


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    except OSError:
        return []
    return [int(child) for child in text.split()]


def timed(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``argv`` under ``/usr/bin/time -v``; return wall time and peak memory.

    ``python_hwm_kib`` is the last VmHWM read from the direct child of time
    when that child is the worker's Python process, sampled every 20 ms.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        started = time.perf_counter()
        process = subprocess.Popen(
            ["/usr/bin/time", "-v", "-o", report.name, *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        python_hwm = 0
        while process.poll() is None:
            for child in children(process.pid):
                try:
                    if "python" in os.readlink(f"/proc/{child}/exe"):
                        python_hwm = max(
                            python_hwm, process_memory_kib(child).get("VmHWM", 0)
                        )
                except OSError:
                    pass
            time.sleep(0.02)
        wall = time.perf_counter() - started
        stdout, stderr = process.communicate()
        text = report.read()
    if process.returncode != 0:
        raise SystemExit(
            f"{argv[0]} failed with exit status {process.returncode}:\n"
            f"{stderr.decode(errors='replace')[-2000:]}\n{text[-1000:]}"
        )
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "wall_seconds": wall,
        "backup_seconds": _logged_backup_seconds(stdout),
        "max_rss_kib": int(peak.group(1)) if peak else 0,
        "python_hwm_kib": python_hwm or None,
    }


def _logged_backup_seconds(stdout: bytes) -> float | None:
    """Return the time from "Backup started" to "Backup succeeded" in the worker's log.

    That is the cost a scheduled ``backup-worker`` pays per backup, without
    the interpreter's start-up that a one-shot ``backup now`` adds.
    """
    times: dict[str, datetime] = {}
    for line in stdout.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") in {"backup_started", "backup_succeeded"}:
            times[record["event"]] = datetime.fromisoformat(record["time"])
    if len(times) < 2:
        return None
    return (times["backup_succeeded"] - times["backup_started"]).total_seconds()


class Bench:
    """The two ways of dumping one database, and where their files go."""

    def __init__(self, services: dict[str, str], work: Path) -> None:
        self.services = services
        self.work = work
        self.host = services.get("MOLO_TEST_PGHOST", "127.0.0.1")
        self.port = services.get("MOLO_TEST_PGPORT", "5432")

    def worker(self, database: str, level: int) -> dict[str, Any]:
        backup_dir = self.work / f"worker-{uuid.uuid4().hex[:6]}"
        backup_dir.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # Runs the source tree this script is in, as bench.common explains.
            "PYTHONPATH": str(REPO_ROOT),
            "PGHOST": self.host,
            "PGPORT": self.port,
            "PGUSER": PGUSER,
            # The server trusts loopback connections; the worker requires a value.
            "PGPASSWORD": "unused",
            "BACKUP_DIR": str(backup_dir),
            "BACKUP_FORMAT": "custom",
            "BACKUP_COMPRESSION_LEVEL": str(level),
            "HOME": str(self.work),
        }
        figures = timed([EXECUTABLE, "backup", "now", "--database", database], env)
        files = [p for p in backup_dir.rglob("*.dump") if p.is_file()]
        figures["bytes"] = sum(p.stat().st_size for p in files)
        shutil.rmtree(backup_dir)
        return figures

    def bare(self, database: str, level: int) -> dict[str, Any]:
        target = self.work / f"bare-{uuid.uuid4().hex[:6]}.dump"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PGHOST": self.host,
            "PGPORT": self.port,
            "PGUSER": PGUSER,
        }
        figures = timed(
            [
                shutil.which("pg_dump") or "pg_dump",
                "--no-password",
                "--format=custom",
                f"--file={target}",
                f"--compress={level}",
                database,
            ],
            env,
        )
        figures["bytes"] = target.stat().st_size
        target.unlink()
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale factor")
    parser.add_argument("--runs", type=int, default=3, help="runs of each way")
    parser.add_argument(
        "--level",
        type=int,
        default=9,
        help="compression level of the comparison (the worker's default is 9)",
    )
    parser.add_argument(
        "--levels", default="0,1,6,9", help="compression levels of the size table"
    )
    args = parser.parse_args()
    services = service_env()
    suffix = uuid.uuid4().hex[:6]
    large = f"bench_backup_{suffix}"
    small = f"bench_backup_small_{suffix}"
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    bench = Bench(services, work)
    results: dict[str, Any] = {"load_before": load_average()}
    try:
        print(f"creating {large} at scale {args.scale}", flush=True)
        results["large_bytes"] = create_database(services, large, args.scale)
        results["small_bytes"] = create_database(services, small, 1)

        comparison: dict[str, list[dict[str, Any]]] = {"worker": [], "bare": []}
        for run in range(args.runs):
            order = ("worker", "bare") if run % 2 == 0 else ("bare", "worker")
            for way in order:
                measure = bench.worker if way == "worker" else bench.bare
                comparison[way].append(measure(large, args.level))
                print(f"run {run + 1} {way}: {comparison[way][-1]}", flush=True)
        results["comparison"] = comparison

        levels = {}
        for level in (int(value) for value in args.levels.split(",")):
            levels[level] = bench.worker(large, level)
            print(f"level {level}: {levels[level]}", flush=True)
        results["levels"] = levels
        results["small"] = [bench.worker(small, args.level) for _ in range(2)]
        results["load_after"] = load_average()
    finally:
        for database in (large, small):
            psql(services, f'DROP DATABASE IF EXISTS "{database}"')
        shutil.rmtree(work, ignore_errors=True)

    worker_wall = summarise([r["wall_seconds"] for r in comparison["worker"]])
    bare_wall = summarise([r["wall_seconds"] for r in comparison["bare"]])
    print(f"database {results['large_bytes'] / 2**30:.2f} GiB, level {args.level}")
    print_table(
        [
            "way",
            "runs",
            "median s",
            "min s",
            "max s",
            "median logged backup s",
            "peak RSS MiB (tree)",
            "worker VmHWM MiB",
            "file MiB",
        ],
        [
            [
                way,
                len(runs),
                summarise([r["wall_seconds"] for r in runs])["p50"],
                min(r["wall_seconds"] for r in runs),
                max(r["wall_seconds"] for r in runs),
                summarise([r["backup_seconds"] or float("nan") for r in runs])["p50"]
                if way == "worker"
                else float("nan"),
                max(r["max_rss_kib"] for r in runs) / 1024,
                max((r["python_hwm_kib"] or 0) for r in runs) / 1024,
                runs[0]["bytes"] / 2**20,
            ]
            for way, runs in comparison.items()
        ],
    )
    logged = summarise([r["backup_seconds"] or 0.0 for r in comparison["worker"]])
    print(f"worker / bare median: {worker_wall['p50'] / bare_wall['p50']:.3f}")
    print(
        "worker without interpreter start-up (logged backup time) / bare median: "
        f"{logged['p50'] / bare_wall['p50']:.3f}"
    )
    print_table(
        ["level", "seconds", "MiB", "ratio to database size"],
        [
            [
                level,
                r["wall_seconds"],
                r["bytes"] / 2**20,
                r["bytes"] / results["large_bytes"],
            ]
            for level, r in levels.items()
        ],
    )
    print_table(
        ["database", "size MiB", "worker VmHWM MiB", "peak RSS MiB (tree)"],
        [
            [
                "large",
                results["large_bytes"] / 2**20,
                max((r["python_hwm_kib"] or 0) for r in comparison["worker"]) / 1024,
                max(r["max_rss_kib"] for r in comparison["worker"]) / 1024,
            ],
            [
                "small",
                results["small_bytes"] / 2**20,
                max((r["python_hwm_kib"] or 0) for r in results["small"]) / 1024,
                max(r["max_rss_kib"] for r in results["small"]) / 1024,
            ],
        ],
    )
    write_results("backup", results)


if __name__ == "__main__":
    main()
