"""Detection latency: from the daemon's event timestamp to Slack and the Pushgateway.

For each number of monitored containers it starts the real ``molochain-workers
health-monitor`` against the private test dockerd, kills containers one at a
time and restarts them, flips one container's health check to unhealthy and
back, and measures from the ``timeNano`` of each ``die``, ``start`` or
``health_status`` event to:

* a bare subscriber of the same filtered stream (the floor),
* the Slack receiver getting the alert,
* the Pushgateway recorder receiving the push that carries the new value, and
  the real gateway behind it acknowledging that push.

Each action waits until 1.2 s after the previous Slack message, so every alert
is the first of its batch and the channel's 1 message/s limit adds no wait.

The polling design is computed, not run: a change waits for the next poll,
uniform over the interval, plus one measured poll cycle (list all containers,
inspect each monitored one). Sending the alert would only add to that.

Run: ``.venv/bin/python -m bench.latency`` (options: ``--help``).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker

from bench.common import (
    load_average,
    monitor_env,
    print_table,
    remove_containers,
    service_env,
    summarise,
    write_results,
)
from bench.polling import poll_once
from bench.recorders import EventWatcher, PushRecorder, SeenEvent
from tests.support.docker_env import Containers
from tests.support.pushgateway import delete_group
from tests.support.slack import Received, SlackReceiver
from tests.support.worker import WorkerProcess

HEALTHCHECK = {
    "test": ["CMD-SHELL", "test -f /tmp/ok || { echo ok file missing; exit 1; }"],
    "interval": 500_000_000,
    "timeout": 1_000_000_000,
    "retries": 1,
    "start_period": 0,
}
SLACK_SPACING = 1.2
WAIT_TIMEOUT = 20.0
POLL_SAMPLES = 10


def wait_until(check: Callable[[], Any], timeout: float = WAIT_TIMEOUT) -> Any:
    """Poll ``check`` every millisecond; return its first truthy result or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.001)
    return None


def slack_message(slack: SlackReceiver, title: str, after: float) -> Received | None:
    for request in slack.accepted:
        if request.time < after:
            continue
        for attachment in request.body.get("attachments", []):
            if title in str(attachment.get("title", "")):
                return request
    return None


class Run:
    """One monitor against ``size`` containers and the peers that time it."""

    def __init__(self, services: dict[str, str], size: int) -> None:
        self.size = size
        self.services = services
        self.docker_host = services["MOLO_TEST_DOCKER_HOST"]
        self.gateway = services["MOLO_TEST_PUSHGATEWAY"]
        self.prefix = f"bench-lat{size}-{uuid.uuid4().hex[:6]}"
        self.api = docker.APIClient(
            base_url=self.docker_host, version="auto", timeout=60
        )
        self.containers = Containers(self.api, services["MOLO_TEST_IMAGE"], self.prefix)
        self.samples: dict[str, list[dict[str, float]]] = {
            "kill": [],
            "start": [],
            "unhealthy": [],
            "healthy": [],
        }
        self.missed: list[str] = []

    def create(self) -> list[str]:
        """Create the containers; the first has a health check the run can flip."""

        def make(index: int) -> str:
            if index == 0:
                return self.containers.run(
                    "c0000", "touch /tmp/ok; exec sleep 3600", healthcheck=HEALTHCHECK
                )
            return self.containers.run(f"c{index:04d}", ("sleep", "3600"))

        with ThreadPoolExecutor(max_workers=8) as pool:
            names = list(pool.map(make, range(self.size)))
        wait_until(lambda: self.containers.health(names[0]) == "healthy", 30)
        return names

    def measure_poll_cycle(self) -> list[float]:
        costs = []
        for _ in range(POLL_SAMPLES):
            started = time.perf_counter()
            poll_once(self.api, self.prefix)
            costs.append(time.perf_counter() - started)
        return costs

    def transition(
        self,
        kind: str,
        name: str,
        action: str,
        title: str,
        value: float,
        act: Callable[[], None],
        watcher: EventWatcher,
        slack: SlackReceiver,
        pushes: PushRecorder,
    ) -> float:
        """Cause one transition, record its latencies, return the Slack arrival."""
        issued = time.time()
        issued_nano = int(issued * 1e9) - 50_000_000
        act()
        event: SeenEvent | None = wait_until(
            lambda: watcher.find(name, action, issued_nano)
        )
        message: Received | None = wait_until(
            lambda: slack_message(slack, title, issued)
        )
        push = wait_until(
            lambda: next(
                (
                    p
                    for p in pushes.snapshot()
                    if p.arrived >= issued
                    and p.gauge("container_health", container=name) == value
                ),
                None,
            )
        )
        if event is None or message is None or push is None:
            self.missed.append(
                f"{kind} {name}: event={event is not None} "
                f"slack={message is not None} push={push is not None}"
            )
            return time.time()
        stamp = event.time_nano / 1e9
        # Another alert just before this one, such as a slow health probe
        # under load, makes the channel wait out its 1 message/s limit. Such a
        # sample measures the pacing, not the monitor, so it is left out.
        paced = any(
            request is not message and 0 <= message.time - request.time < 1.1
            for request in slack.accepted
        )
        self.samples[kind].append(
            {
                "paced": float(paced),
                "subscriber": event.received - stamp,
                "slack": message.time - stamp,
                "push_arrived": push.arrived - stamp,
                "push_stored": push.stored - stamp,
            }
        )
        return message.time

    def execute(self, kills: int, flips: int) -> dict[str, Any]:
        names = self.create()
        poll_costs = self.measure_poll_cycle()
        targets = names[1:] if self.size > 1 else names
        health_name = names[0]

        slack = SlackReceiver().start()
        pushes = PushRecorder(self.gateway).start()
        watcher = EventWatcher(
            self.docker_host,
            keep=lambda raw: str(
                raw.get("Actor", {}).get("Attributes", {}).get("name", "")
            ).startswith(self.prefix),
        ).start()
        log_dir = tempfile.mkdtemp(prefix="bench-latency-")
        worker = WorkerProcess(
            ["health-monitor"],
            {
                **monitor_env(
                    self.services,
                    self.prefix,
                    check_interval=60,
                    slack_url=slack.url,
                    log_dir=log_dir,
                    gateway=pushes.url,
                ),
                # Kills repeat on the same containers, and a restart loop
                # would silence their alerts, which is not what is measured.
                "RESTART_LOOP_THRESHOLD": "1000000",
            },
        ).start()
        load_before = load_average()
        try:
            worker.wait_event("connected", timeout=60)
            time.sleep(2)
            last = time.time()
            for index in range(kills):
                name = targets[index % len(targets)]
                for kind, action, title, value, act in (
                    (
                        "kill",
                        "die",
                        f"Container {name} is down",
                        0.0,
                        lambda n=name: self.api.kill(n),
                    ),
                    (
                        "start",
                        "start",
                        f"Container {name} recovered",
                        1.0,
                        lambda n=name: self.api.start(n),
                    ),
                ):
                    time.sleep(max(last + SLACK_SPACING - time.time(), 0.0))
                    last = self.transition(
                        kind, name, action, title, value, act, watcher, slack, pushes
                    )
            for _ in range(flips):
                for kind, action, title, value, command in (
                    (
                        "unhealthy",
                        "health_status: unhealthy",
                        f"Container {health_name} is unhealthy",
                        0.0,
                        "rm",
                    ),
                    (
                        "healthy",
                        "health_status: healthy",
                        f"Container {health_name} recovered",
                        1.0,
                        "touch",
                    ),
                ):
                    time.sleep(max(last + SLACK_SPACING - time.time(), 0.0))
                    last = self.transition(
                        kind,
                        health_name,
                        action,
                        title,
                        value,
                        functools.partial(self._touch_ok, health_name, command),
                        watcher,
                        slack,
                        pushes,
                    )
        finally:
            load_after = load_average()
            worker.stop()
            watcher.stop()
            slack.stop()
            pushes.stop()
            remove_containers(self.api, self.containers.created)
            delete_group(self.gateway, "health-monitor", self.prefix)
            self.api.close()
        return {
            "containers": self.size,
            "poll_cycle_seconds": poll_costs,
            "samples": self.samples,
            "missed": self.missed,
            "load_before": load_before,
            "load_after": load_after,
        }

    def _touch_ok(self, name: str, command: str) -> None:
        """Create or delete the file the health check tests for."""
        self.containers.exec(name, command, "/tmp/ok")


def polling_latency(interval: float, cycle: float) -> dict[str, float]:
    """Quantiles of a wait uniform over ``interval`` plus one poll ``cycle``."""
    return {
        "p50": 0.50 * interval + cycle,
        "p95": 0.95 * interval + cycle,
        "p99": 0.99 * interval + cycle,
    }


def report(results: list[dict[str, Any]]) -> None:
    rows: list[list[object]] = []
    for result in results:
        size = result["containers"]
        for kind in ("kill", "start", "unhealthy", "healthy"):
            samples = [s for s in result["samples"][kind] if not s.get("paced")]
            if not samples:
                continue
            for path in ("subscriber", "slack", "push_arrived", "push_stored"):
                stats = summarise([s[path] * 1000 for s in samples])
                rows.append(
                    [
                        size,
                        kind,
                        path,
                        stats["count"],
                        stats["p50"],
                        stats["p95"],
                        stats["p99"],
                        stats["max"],
                    ]
                )
            gap = summarise([(s["slack"] - s["subscriber"]) * 1000 for s in samples])
            rows.append(
                [
                    size,
                    kind,
                    "slack minus subscriber",
                    gap["count"],
                    gap["p50"],
                    gap["p95"],
                    gap["p99"],
                    gap["max"],
                ]
            )
        cycle = summarise(result["poll_cycle_seconds"])["p50"]
        for interval in (5.0, 60.0):
            figures = polling_latency(interval, cycle)
            rows.append(
                [
                    size,
                    "any",
                    f"polling {interval:g} s (computed)",
                    "-",
                    figures["p50"] * 1000,
                    figures["p95"] * 1000,
                    figures["p99"] * 1000,
                    interval * 1000 + cycle * 1000,
                ]
            )
    print_table(
        [
            "containers",
            "transition",
            "until",
            "n",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
        ],
        rows,
    )


def report_paced(results: list[dict[str, Any]]) -> None:
    for result in results:
        for kind, samples in result["samples"].items():
            paced = sum(1 for sample in samples if sample.get("paced"))
            if paced:
                print(
                    f"{result['containers']} containers, {kind}: {paced} of "
                    f"{len(samples)} samples left out, sent after the 1 s Slack pacing"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="1,50,200", help="comma-separated container counts"
    )
    parser.add_argument(
        "--kills", type=int, default=100, help="kills (and restarts) per size"
    )
    parser.add_argument(
        "--flips", type=int, default=20, help="unhealthy/healthy flips per size"
    )
    args = parser.parse_args()
    services = service_env()
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"measuring {size} containers, load {load_average()}", flush=True)
        result = Run(services, size).execute(args.kills, args.flips)
        if result["missed"]:
            print(f"missed: {result['missed']}")
        results.append(result)
    report(results)
    report_paced(results)
    write_results("latency", {"runs": results})


if __name__ == "__main__":
    main()
