"""The polling design the event-driven monitor replaces, kept as a baseline.

Every interval it lists all containers and inspects each monitored one for its
state and health, as a polling health checker must; it sends nothing. Run it
with ``python -m bench.polling --interval 60 --prefix NAME-``.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

import docker


def poll_once(api: docker.APIClient, prefix: str) -> dict[str, str]:
    """List every container, inspect those named ``prefix*``; return name to status."""
    statuses: dict[str, str] = {}
    for entry in api.containers(all=True):
        names = [name.lstrip("/") for name in entry.get("Names") or []]
        if not any(name.startswith(prefix) for name in names):
            continue
        details = api.inspect_container(entry["Id"])
        state = details.get("State") or {}
        health = (state.get("Health") or {}).get("Status", "")
        statuses[details["Name"].lstrip("/")] = f"{state.get('Status')} {health}"
    return statuses


def run(docker_host: str, prefix: str, interval: float, stop: threading.Event) -> int:
    """Poll until ``stop`` is set; return how many polls were made."""
    api = docker.APIClient(base_url=docker_host, version="auto", timeout=30)
    previous: dict[str, str] = {}
    polls = 0
    while not stop.is_set():
        started = time.monotonic()
        current = poll_once(api, prefix)
        changed = [
            name for name, status in current.items() if previous.get(name) != status
        ]
        if previous and changed:
            print(f"changed: {', '.join(sorted(changed))}", flush=True)
        previous = current
        polls += 1
        stop.wait(max(interval - (time.monotonic() - started), 0.0))
    api.close()
    return polls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--interval", type=float, default=60.0, help="seconds between polls"
    )
    parser.add_argument(
        "--prefix", required=True, help="container name prefix to watch"
    )
    parser.add_argument(
        "--docker-host",
        default=os.environ.get("DOCKER_HOST", ""),
        help="Docker Engine address, e.g. unix:///tmp/molochain-test/docker/docker.sock",
    )
    args = parser.parse_args()
    if not args.docker_host:
        raise SystemExit("--docker-host or DOCKER_HOST is required")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("polling started", flush=True)
    polls = run(args.docker_host, args.prefix, args.interval, stop)
    print(f"polling stopped after {polls} polls", flush=True)


if __name__ == "__main__":
    main()
