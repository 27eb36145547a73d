"""Shared helpers of the benchmark scripts: the machine, percentiles, output."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
TEST_ROOT = Path(os.environ.get("MOLO_TEST_ROOT", "/tmp/molochain-test"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def service_env() -> dict[str, str]:
    """Return the ``MOLO_TEST_*`` addresses that ``scripts/test-env.sh`` wrote.

    Raises SystemExit with the fix when the test services were never started.
    """
    found = {k: v for k, v in os.environ.items() if k.startswith("MOLO_TEST_")}
    try:
        lines = (TEST_ROOT / "env").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        key, _, value = line.partition("=")
        found.setdefault(key, value)
    if "MOLO_TEST_DOCKER_HOST" not in found:
        raise SystemExit(
            "MOLO_TEST_DOCKER_HOST is not set; run `bash scripts/test-env.sh` first"
        )
    return found


def _first_line(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(
            list(command), capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unavailable"


def machine() -> dict[str, Any]:
    """Describe the machine a figure was measured on."""
    cpu_model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_client": _first_line(["docker", "--version"]),
        "docker_engine": _first_line(
            [
                "docker",
                "--host",
                f"unix://{TEST_ROOT / 'docker' / 'docker.sock'}",
                "version",
                "--format",
                "{{.Server.Version}} (API {{.Server.APIVersion}})",
            ]
        ),
        "postgresql_client": _first_line(["psql", "--version"]),
        "postgresql_server": _first_line(
            [
                "psql",
                "-X",
                "-At",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-c",
                "SHOW server_version",
            ]
        ),
    }


def load_average() -> tuple[float, float, float]:
    """Return the 1, 5 and 15 minute load averages."""
    return os.getloadavg()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile with linear interpolation (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Return count, p50, p95, p99, max and mean of ``values``."""
    return {
        "count": len(values),
        "p50": percentile(values, 0.50),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a Markdown table, ready to paste into docs/benchmarks.md."""
    rendered = [[_cell(value) for value in row] for row in rows]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rendered:
        print("| " + " | ".join(row) + " |")


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``data``, the machine and the load to ``bench/results/NAME-TIME.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    document = {
        "benchmark": name,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "load_average_at_end": load_average(),
        **data,
    }
    path.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    print(f"raw figures written to {path}")
    return path


def process_cpu_seconds(pid: int) -> float:
    """Return utime + stime of a process, in seconds (resolution 1/CLK_TCK)."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
        # The command name may contain spaces; the fields after it are fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak resident) of a process, in KiB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            key = line.split(":", 1)[0]
            if key in {"VmRSS", "VmHWM"}:
                found[key] = int(line.split()[1])
    return found


def monitor_env(
    services: dict[str, str],
    prefix: str,
    *,
    check_interval: int,
    slack_url: str,
    log_dir: str,
    gateway: str | None = None,
) -> dict[str, str]:
    """Return the settings of a health monitor watching only ``prefix-*``.

    PYTHONPATH makes the monitor run the source tree this script is in, so a
    benchmark run from a separate checkout measures that checkout.
    """
    return {
        "PYTHONPATH": str(REPO_ROOT),
        "DOCKER_HOST": services["MOLO_TEST_DOCKER_HOST"],
        "HEALTH_LOG_DIR": log_dir,
        "CONTAINERS_TO_MONITOR": f"{prefix}-*",
        "CHECK_INTERVAL": str(check_interval),
        "INSTANCE_NAME": prefix,
        "SLACK_WEBHOOK_URL": slack_url,
        "PROMETHEUS_PUSHGATEWAY": gateway or services["MOLO_TEST_PUSHGATEWAY"],
    }


def remove_containers(api: docker.APIClient, names: Iterable[str]) -> None:
    """Remove containers by force, eight at a time; a missing one is skipped."""

    def remove(name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(name, force=True)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(remove, names))
