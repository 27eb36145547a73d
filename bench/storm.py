"""Event storm: how many events per second the reactor sustains, and what it drops.

Two parts:

``synthetic`` generates a stream of Docker-shaped container events for 200
containers: per container, the ``exec_create``/``exec_start``/``exec_die``
triple of every health probe (noise the server-side filter drops on a real
engine, fed through here as the worst case), plus restart loops (``die`` then
``start``) and health flips. Each event is serialised to JSON and decoded
again, as docker-py does. It then takes the monitor's real path: the events
reader thread, the asyncio queue, ``HealthMonitor._follow`` and
``_handle_raw``, and the state machine. Transitions are logged, and signals
reach the notifier's Slack queue (posting to a loopback receiver), the
metrics pusher and the state file. It checks the final state against the
one the generator expects, samples resident memory, and counts every alert
in the Slack messages.

``live`` starts 200 containers on the private test dockerd that exit at once
under ``--restart always``, runs the real ``molochain-workers health-monitor``
process against them, records every event of theirs with an unfiltered
subscriber, and checks that the monitor counted each death.

Run: ``.venv/bin/python -m bench.storm`` (options: ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
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
from handlers.channels import build_channels
from handlers.metrics import MonitorMetrics
from handlers.notifier import Notifier
from reactor import events as reactor_events
from reactor import signals
from reactor.alerts import Alert
from reactor.config import MonitorSettings, load
from reactor.events import EventReader
from reactor.logs import setup_logging
from reactor.monitor import HealthMonitor
from reactor.state import Health
from tests.support.docker_env import Containers
from tests.support.pushgateway import delete_group
from tests.support.slack import SlackReceiver
from tests.support.worker import WorkerProcess

PROBE = "/bin/sh -c test -f /tmp/ok"
# Whether EventReader splits and decodes the raw stream itself.
READER_DECODES = hasattr(reactor_events, "split_lines")
# Labels that a compose-managed container carries into every event's attributes.
COMPOSE_LABELS = {
    "com.docker.compose.config-hash": "0" * 64,
    "com.docker.compose.container-number": "1",
    "com.docker.compose.depends_on": "",
    "com.docker.compose.image": "sha256:" + "1" * 64,
    "com.docker.compose.oneoff": "False",
    "com.docker.compose.project": "molochain",
    "com.docker.compose.service": "api",
    "com.docker.compose.version": "2.24.6",
}


# -- synthetic stream ------------------------------------------------------


@dataclass
class Expected:
    """The final state and counts the generator expects the monitor to reach."""

    health: dict[str, Health] = field(default_factory=dict)
    deaths: dict[str, int] = field(default_factory=dict)
    transitions: int = 0


class StormStream:
    """Docker-shaped events for a storm, encoded and decoded one at a time.

    Each tick every container runs one health probe (three noise events). One
    in four containers dies and restarts every fifth tick, and one in ten
    flips its health every seventh tick. Event times are spread evenly over
    the last minute, so no restart loop can end while the stream is read.

    Every event is rendered from a per-container JSON template and handed
    over as the Engine sends it, one newline-terminated line per chunk, so
    the reader thread pays for decoding but memory does not grow with the
    stream. With an events reader that expects decoded objects (docker-py's
    ``decode=True``), the lines are decoded here instead, on the same thread.
    :attr:`expected` is complete once the stream is exhausted.
    """

    def __init__(self, prefix: str, containers: int, ticks: int) -> None:
        self.names = [f"{prefix}-{index:04d}" for index in range(containers)]
        self.ids = [uuid.uuid5(uuid.NAMESPACE_DNS, name).hex * 2 for name in self.names]
        self.ticks = ticks
        self.expected = Expected()
        self.kinds: dict[str, int] = {}
        self.read = 0
        self._templates: dict[tuple[int, str, str | None], str] = {}
        self._clock = time.time_ns() - 60_000_000_000
        self._step = 60_000_000_000 // max(ticks * containers * 3, 1)

    def _template(self, index: int, action: str, exit_code: str | None) -> str:
        key = (index, action, exit_code)
        template = self._templates.get(key)
        if template is None:
            attributes = {
                **COMPOSE_LABELS,
                "image": "registry.example/api:1.4.2",
                "name": self.names[index],
            }
            if action.startswith("exec_"):
                attributes["execID"] = "@EXEC@"
            if exit_code is not None:
                attributes["exitCode"] = exit_code
            raw = {
                "status": action,
                "id": self.ids[index],
                "from": attributes["image"],
                "Type": "container",
                "Action": action,
                "Actor": {"ID": self.ids[index], "Attributes": attributes},
                "scope": "local",
                "time": "@TIME@",
                "timeNano": "@NANO@",
            }
            template = json.dumps(raw)
            self._templates[key] = template
        return template

    def _emit(
        self, index: int, action: str, exit_code: str | None = None, exec_id: str = ""
    ) -> Any:
        self._clock += self._step
        line = (
            self._template(index, action, exit_code)
            .replace('"@NANO@"', str(self._clock))
            .replace('"@TIME@"', str(self._clock // 1_000_000_000))
            .replace("@EXEC@", exec_id)
        )
        kind = action.partition(":")[0]
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.read += 1
        if READER_DECODES:
            return (line + "\n").encode()
        return json.loads(line)

    def _settle(self, name: str, health: Health) -> None:
        if self.expected.health.get(name) != health:
            self.expected.transitions += 1
        self.expected.health[name] = health

    def __iter__(self) -> Iterator[Any]:
        unhealthy = dict.fromkeys(self.names, False)
        for tick in range(self.ticks):
            for index, name in enumerate(self.names):
                exec_id = f"{tick:08x}{index:08x}" * 4
                yield self._emit(index, f"exec_create: {PROBE}", exec_id=exec_id)
                yield self._emit(index, f"exec_start: {PROBE}", exec_id=exec_id)
                yield self._emit(index, "exec_die", "0", exec_id=exec_id)
                if tick == 0:
                    yield self._emit(index, "start")
                    self._settle(name, Health.UP)
                if index % 4 == 0 and tick % 5 == index % 5:
                    yield self._emit(index, "die", "1")
                    self._settle(name, Health.DOWN)
                    deaths = self.expected.deaths
                    deaths[name] = deaths.get(name, 0) + 1
                    yield self._emit(index, "start")
                    self._settle(name, Health.UP)
                if index % 10 == 1 and tick % 7 == 0:
                    unhealthy[name] = not unhealthy[name]
                    detail = "unhealthy" if unhealthy[name] else "healthy"
                    yield self._emit(index, f"health_status: {detail}")
                    self._settle(
                        name, Health.DEGRADED if unhealthy[name] else Health.UP
                    )

    def close(self) -> None:
        return


class MemorySampler:
    """Sample this process's resident memory and progress every 100 ms."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.perf_counter()

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(
                {
                    "seconds": time.perf_counter() - self._started,
                    "events": self.monitor.stats.events_seen,
                    "rss_kib": process_memory_kib(os.getpid())["VmRSS"],
                    "queued": self.monitor._queue.qsize(),
                }
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def count_delivered(slack: SlackReceiver) -> tuple[int, int]:
    """Return the alerts carried by accepted Slack messages, and the summaries."""
    alerts = 0
    summaries = 0
    for request in slack.accepted:
        for attachment in request.body.get("attachments", []):
            title = str(attachment.get("title", ""))
            count, _, rest = title.partition(" ")
            if rest == "more alerts" and count.isdigit():
                alerts += int(count)
                summaries += 1
            else:
                alerts += 1
    return alerts, summaries


async def replay(
    stream: StormStream, settings: MonitorSettings, slack: SlackReceiver
) -> dict[str, Any]:
    """Feed ``stream`` through the monitor's reader, queue and event handling."""
    monitor = HealthMonitor(settings)
    notifier = Notifier(build_channels(settings))
    notifier.start()
    metrics = MonitorMetrics(
        str(settings.prometheus_pushgateway), notifier.stats, lambda: monitor.host
    )
    metrics.start()
    raised: list[Alert] = []

    def count_alert(_sender: object, *, alert: Alert) -> None:
        raised.append(alert)

    signals.connect(signals.alert_raised, count_alert)
    saver = asyncio.create_task(monitor._save_loop())
    monitor._reader = EventReader(stream, asyncio.get_running_loop(), monitor._queue)
    sampler = MemorySampler(monitor).start()
    cpu_before = process_cpu_seconds(os.getpid())

    started = time.perf_counter()
    monitor._reader.start()
    await monitor._follow()
    elapsed = time.perf_counter() - started
    cpu = process_cpu_seconds(os.getpid()) - cpu_before

    sampler.stop()
    drain_started = time.perf_counter()
    # The notifier has no "drained" event, and polling leaves it unchanged.
    while notifier.queues[0].pending and time.perf_counter() - drain_started < 120:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    drain = time.perf_counter() - drain_started
    signals.alert_raised.disconnect(count_alert)
    await notifier.stop(10)
    await metrics.stop()
    saver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await saver
    return {
        "monitor": monitor,
        "elapsed": elapsed,
        "cpu_seconds": cpu,
        "alerts_raised": len(raised),
        "slack_drain_seconds": drain,
        "memory": sampler.samples,
        "pushes": metrics.pusher.pushes,
    }


def synthetic(services: dict[str, str], containers: int, ticks: int) -> dict[str, Any]:
    prefix = f"storm-{uuid.uuid4().hex[:6]}"
    stream = StormStream(prefix, containers, ticks)
    slack = SlackReceiver().start()
    work = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    settings = load(
        MonitorSettings,
        monitor_env(
            services,
            prefix,
            check_interval=3600,
            slack_url=slack.url,
            log_dir=str(work),
        ),
    )
    # The worker logs JSON lines to stdout and a file; stdout goes to
    # /dev/null here so the table stays readable, but every line is formatted.
    with open(os.devnull, "w", encoding="utf-8") as devnull:
        real_stdout = sys.stdout
        sys.stdout = devnull
        try:
            setup_logging("health-monitor", "INFO", work / "health-monitor.log")
        finally:
            sys.stdout = real_stdout
        try:
            outcome = asyncio.run(replay(stream, settings, slack))
        finally:
            slack.stop()
            delete_group(services["MOLO_TEST_PUSHGATEWAY"], "health-monitor", prefix)

    monitor: HealthMonitor = outcome.pop("monitor")
    states = monitor.machine.states
    expected = stream.expected
    wrong_health = sorted(
        name
        for name, health in expected.health.items()
        if name not in states or states[name].health != health
    )
    wrong_deaths = sorted(
        name
        for name, deaths in expected.deaths.items()
        if name not in states or len(states[name].deaths) != deaths
    )
    delivered, summaries = count_delivered(slack)
    gaps = [
        later.time - earlier.time
        for earlier, later in zip(slack.accepted, slack.accepted[1:], strict=False)
    ]
    memory = outcome["memory"]
    return {
        "events": stream.read,
        "event_kinds": stream.kinds,
        "containers": containers,
        "seconds": outcome["elapsed"],
        "events_per_second": stream.read / outcome["elapsed"],
        "cpu_seconds": outcome["cpu_seconds"],
        "events_seen": monitor.stats.events_seen,
        "transitions_expected": expected.transitions,
        "transitions_counted": monitor.stats.transitions,
        "wrong_final_health": wrong_health,
        "wrong_death_counts": wrong_deaths,
        "alerts_raised": outcome["alerts_raised"],
        "alerts_delivered": delivered,
        "slack_messages": len(slack.accepted),
        "slack_summaries": summaries,
        "slack_min_gap_seconds": min(gaps) if gaps else None,
        "slack_drain_seconds": outcome["slack_drain_seconds"],
        "pushes": outcome["pushes"],
        "rss_kib_first": memory[0]["rss_kib"] if memory else None,
        "rss_kib_max": max(s["rss_kib"] for s in memory) if memory else None,
        "rss_kib_last": memory[-1]["rss_kib"] if memory else None,
        "max_queued": max(s["queued"] for s in memory) if memory else None,
        "memory_samples": memory,
    }


# -- live restart loops ------------------------------------------------------


def live(services: dict[str, str], containers: int, seconds: float) -> dict[str, Any]:
    docker_host = services["MOLO_TEST_DOCKER_HOST"]
    prefix = f"bench-storm-{uuid.uuid4().hex[:6]}"
    api = docker.APIClient(base_url=docker_host, version="auto", timeout=120)
    created = Containers(api, services["MOLO_TEST_IMAGE"], prefix)
    slack = SlackReceiver().start()
    watcher = EventWatcher(
        docker_host,
        filters={"type": ["container"]},
        keep=lambda raw: str(
            raw.get("Actor", {}).get("Attributes", {}).get("name", "")
        ).startswith(prefix),
    ).start()
    work = Path(tempfile.mkdtemp(prefix="bench-storm-live-"))
    worker = WorkerProcess(
        ["health-monitor"],
        monitor_env(
            services,
            prefix,
            check_interval=3600,
            slack_url=slack.url,
            log_dir=str(work),
        ),
    ).start()
    load_before = load_average()
    try:
        worker.wait_event("connected", timeout=60)
        assert worker.process is not None
        pid = worker.process.pid
        cpu_before = process_cpu_seconds(pid)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda index: created.run(
                        f"c{index:04d}", ("false",), restart="always"
                    ),
                    range(containers),
                )
            )
        time.sleep(max(seconds - (time.monotonic() - started), 0.0))
        window = time.monotonic() - started
        cpu = process_cpu_seconds(pid) - cpu_before
        memory = process_memory_kib(pid)
        load_after = load_average()
        worker.stop()
    finally:
        worker.kill()
        remove_containers(api, created.created)
        watcher.stop()
        slack.stop()
        delete_group(services["MOLO_TEST_PUSHGATEWAY"], "health-monitor", prefix)
        api.close()

    state = json.loads((work / "state.json").read_text(encoding="utf-8"))
    last_nano = int(state["last_event_nano"])
    recorded = [e for e in watcher.snapshot() if e.time_nano <= last_nano]
    deaths: dict[str, int] = {}
    for event in recorded:
        if event.action == "die":
            deaths[event.name] = deaths.get(event.name, 0) + 1
    wrong = sorted(
        name
        for name, count in deaths.items()
        if len(state["containers"].get(name, {}).get("deaths", [])) != count
    )
    delivered, summaries = count_delivered(slack)
    gaps = [
        later.time - earlier.time
        for earlier, later in zip(slack.accepted, slack.accepted[1:], strict=False)
    ]
    kinds: dict[str, int] = {}
    for event in recorded:
        kind = event.action.partition(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    recording = work / "recorded-events.jsonl"
    with recording.open("w", encoding="utf-8") as handle:
        for event in recorded:
            handle.write(json.dumps(event.raw) + "\n")
    return {
        "containers": containers,
        "window_seconds": window,
        "events_recorded": len(recorded),
        "events_per_second": len(recorded) / window,
        "event_kinds": kinds,
        "deaths_recorded": sum(deaths.values()),
        "containers_with_wrong_death_count": wrong,
        "monitor_cpu_seconds": cpu,
        "monitor_memory_kib": memory,
        "slack_messages": len(slack.accepted),
        "slack_summaries": summaries,
        "alerts_delivered": delivered,
        "alerts_sent_logged": sum(
            int(line.get("count", 1)) for line in worker.events("alert_sent")
        ),
        "slack_min_gap_seconds": min(gaps) if gaps else None,
        "recording": str(recording),
        "load_before": load_before,
        "load_after": load_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part",
        choices=["synthetic", "live", "both"],
        default="both",
        help="which storm to run",
    )
    parser.add_argument("--containers", type=int, default=200, help="containers")
    parser.add_argument(
        "--ticks",
        type=int,
        default=500,
        help="probe rounds in the synthetic stream (3 events per container each)",
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="length of the live storm"
    )
    args = parser.parse_args()
    services = service_env()
    results: dict[str, Any] = {"load_before": load_average()}
    rows: list[list[object]] = []
    if args.part in {"synthetic", "both"}:
        results["synthetic"] = synthetic(services, args.containers, args.ticks)
        rows += synthetic_rows(results["synthetic"])
    if args.part in {"live", "both"}:
        results["live"] = live(services, args.containers, args.seconds)
        rows += live_rows(results["live"])
    print_table(["part", "figure", "value"], rows)
    write_results("storm", results)


def synthetic_rows(figures: dict[str, Any]) -> list[list[object]]:
    return [
        ["synthetic", "events", figures["events"]],
        ["synthetic", "events per second", figures["events_per_second"]],
        ["synthetic", "CPU seconds", figures["cpu_seconds"]],
        [
            "synthetic",
            "transitions expected / counted",
            f"{figures['transitions_expected']} / {figures['transitions_counted']}",
        ],
        [
            "synthetic",
            "containers with wrong final health",
            len(figures["wrong_final_health"]),
        ],
        [
            "synthetic",
            "containers with wrong death count",
            len(figures["wrong_death_counts"]),
        ],
        [
            "synthetic",
            "alerts raised / delivered to Slack",
            f"{figures['alerts_raised']} / {figures['alerts_delivered']}",
        ],
        [
            "synthetic",
            "Slack messages (summaries)",
            f"{figures['slack_messages']} ({figures['slack_summaries']})",
        ],
        [
            "synthetic",
            "min seconds between Slack messages",
            figures["slack_min_gap_seconds"],
        ],
        [
            "synthetic",
            "RSS MiB first / max / last sample",
            f"{figures['rss_kib_first'] / 1024:.1f} / "
            f"{figures['rss_kib_max'] / 1024:.1f} / "
            f"{figures['rss_kib_last'] / 1024:.1f}",
        ],
        ["synthetic", "max events queued", figures["max_queued"]],
    ]


def live_rows(figures: dict[str, Any]) -> list[list[object]]:
    return [
        [
            "live",
            "events recorded (per second)",
            f"{figures['events_recorded']} ({figures['events_per_second']:.0f})",
        ],
        ["live", "deaths recorded", figures["deaths_recorded"]],
        [
            "live",
            "containers with wrong death count",
            len(figures["containers_with_wrong_death_count"]),
        ],
        ["live", "monitor CPU seconds", figures["monitor_cpu_seconds"]],
        [
            "live",
            "monitor RSS / peak MiB",
            f"{figures['monitor_memory_kib']['VmRSS'] / 1024:.1f} / "
            f"{figures['monitor_memory_kib']['VmHWM'] / 1024:.1f}",
        ],
        [
            "live",
            "alerts delivered to Slack / logged as sent",
            f"{figures['alerts_delivered']} / {figures['alerts_sent_logged']}",
        ],
        [
            "live",
            "Slack messages (summaries)",
            f"{figures['slack_messages']} ({figures['slack_summaries']})",
        ],
        [
            "live",
            "min seconds between Slack messages",
            figures["slack_min_gap_seconds"],
        ],
    ]


if __name__ == "__main__":
    main()
