"""Idle cost: CPU time and memory of the monitor watching healthy containers.

It starts ``--containers`` healthy containers (health check every 10 s) on the
private test dockerd and runs, side by side over the same window:

* ``molochain-workers health-monitor`` with CHECK_INTERVAL=60 (the default),
* the same with CHECK_INTERVAL=3600, so no reconciliation falls in the window
  and what remains is the cost of following the events stream,
* the polling baseline (``bench/polling.py``) at 60 s and at 5 s.

CPU time is utime + stime from ``/proc/PID/stat`` (1/100 s resolution),
measured over the window after a warm-up and extrapolated to an hour.
Memory is VmRSS and VmHWM from ``/proc/PID/status`` at the end.

Run: ``.venv/bin/python -m bench.idle`` (options: ``--help``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker

from bench.common import (
    load_average,
    monitor_env,
    print_table,
    process_cpu_seconds,
    process_memory_kib,
    remove_containers,
    service_env,
    write_results,
)
from bench.recorders import EventWatcher
from tests.support.docker_env import Containers
from tests.support.pushgateway import delete_group
from tests.support.slack import SlackReceiver
from tests.support.worker import WorkerProcess

HEALTHCHECK = {
    "test": ["CMD-SHELL", "test -f /tmp/ok"],
    "interval": 10_000_000_000,
    "timeout": 5_000_000_000,
    "retries": 3,
    "start_period": 0,
}
WARM_UP = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=50, help="healthy containers")
    parser.add_argument(
        "--window", type=float, default=600.0, help="seconds of measurement"
    )
    parser.add_argument(
        "--churn",
        type=int,
        default=0,
        help="unmonitored containers that die and restart every 10 s, "
        "as other workloads on a shared host do",
    )
    args = parser.parse_args()
    services = service_env()
    docker_host = services["MOLO_TEST_DOCKER_HOST"]
    gateway = services["MOLO_TEST_PUSHGATEWAY"]
    prefix = f"bench-idle-{uuid.uuid4().hex[:6]}"
    api = docker.APIClient(base_url=docker_host, version="auto", timeout=60)
    created = Containers(api, services["MOLO_TEST_IMAGE"], prefix)
    others = Containers(api, services["MOLO_TEST_IMAGE"], f"bench-churn-{prefix[11:]}")
    slack = SlackReceiver().start()
    processes: dict[str, subprocess.Popen[Any]] = {}
    workers: list[WorkerProcess] = []
    results: dict[str, Any] = {
        "containers": args.containers,
        "churn_containers": args.churn,
        "window": args.window,
    }
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda index: created.run(
                        f"c{index:04d}",
                        "touch /tmp/ok; exec sleep 7200",
                        healthcheck=HEALTHCHECK,
                    ),
                    range(args.containers),
                )
            )
            # Another workload's containers: their events reach the monitor,
            # which must ignore them. 10 s of uptime keeps Docker's restart
            # back-off from growing, so each dies about every 10 s.
            list(
                pool.map(
                    lambda index: others.run(
                        f"c{index:04d}", "sleep 10; exit 1", restart="always"
                    ),
                    range(args.churn),
                )
            )
        for interval in ("60", "3600"):
            worker = WorkerProcess(
                ["health-monitor"],
                {
                    **monitor_env(
                        services,
                        prefix,
                        check_interval=int(interval),
                        slack_url=slack.url,
                        log_dir=tempfile.mkdtemp(prefix="bench-idle-"),
                    ),
                    "INSTANCE_NAME": f"{prefix}-{interval}",
                },
            ).start()
            workers.append(worker)
            assert worker.process is not None
            processes[f"monitor, CHECK_INTERVAL={interval}"] = worker.process
        for interval in ("60", "5"):
            processes[f"polling every {interval} s"] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.polling",
                    "--interval",
                    interval,
                    "--prefix",
                    f"{prefix}-",
                    "--docker-host",
                    docker_host,
                ],
                stdout=subprocess.DEVNULL,
            )
        for worker in workers:
            worker.wait_event("connected", timeout=60)
        time.sleep(WARM_UP)

        # Counts what reached the monitors: the same filters, every container.
        watcher = EventWatcher(docker_host, keep=lambda _raw: False).start()
        load_before = load_average()
        before = {name: process_cpu_seconds(p.pid) for name, p in processes.items()}
        started = time.monotonic()
        time.sleep(args.window)
        window = time.monotonic() - started
        after = {name: process_cpu_seconds(p.pid) for name, p in processes.items()}
        memory = {name: process_memory_kib(p.pid) for name, p in processes.items()}
        watcher.stop()
        results["events_in_window"] = watcher.count
        results.update(
            window=window,
            load_before=load_before,
            load_after=load_average(),
            cpu_seconds={name: after[name] - before[name] for name in processes},
            memory_kib=memory,
            transitions_logged={
                f"monitor, CHECK_INTERVAL={interval}": len(
                    [line for line in worker.lines if line.get("event") == "transition"]
                )
                for interval, worker in zip(("60", "3600"), workers, strict=True)
            },
        )
    finally:
        for worker in workers:
            worker.kill()
        for name, process in processes.items():
            if name.startswith("polling"):
                process.terminate()
                process.wait(10)
        remove_containers(api, created.created + others.created)
        for interval in ("60", "3600"):
            delete_group(gateway, "health-monitor", f"{prefix}-{interval}")
        slack.stop()
        api.close()

    rows = []
    for name, cpu in results["cpu_seconds"].items():
        memory = results["memory_kib"][name]
        rows.append(
            [
                name,
                cpu,
                cpu * 3600 / results["window"],
                memory["VmRSS"] / 1024,
                memory["VmHWM"] / 1024,
            ]
        )
    print(
        f"{args.containers} healthy containers, {args.churn} unmonitored ones "
        f"restarting every 10 s, window {results['window']:.0f} s, "
        f"{results['events_in_window']} events passed the monitor's filters"
    )
    print_table(
        [
            "process",
            "CPU s in window",
            "CPU s per hour (extrapolated)",
            "VmRSS MiB",
            "VmHWM MiB",
        ],
        rows,
    )
    write_results("idle", results)


if __name__ == "__main__":
    main()
