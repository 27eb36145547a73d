"""Loopback peers for the benchmarks: a Pushgateway recorder and an events watcher."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import docker
from prometheus_client.parser import text_string_to_metric_families

from reactor.events import EVENT_FILTERS


@dataclass(frozen=True)
class Push:
    """One push the monitor made: when it arrived and when the gateway stored it."""

    arrived: float
    stored: float
    body: str

    def gauge(self, name: str, **labels: str) -> float | None:
        """Return the value of one sample in the pushed body, or None if absent."""
        for family in text_string_to_metric_families(self.body):
            for sample in family.samples:
                if sample.name != name:
                    continue
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None


class PushRecorder:
    """Record each push on 127.0.0.1 and forward it to a real Pushgateway.

    ``arrived`` is when the request body was read; ``stored`` is when the real
    gateway answered the forwarded request, the moment a scrape would show it.
    """

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway.rstrip("/")
        self.pushes: list[Push] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                arrived = time.time()
                request = urllib.request.Request(  # noqa: S310 - loopback http URL
                    recorder.gateway + self.path,
                    data=body if self.command != "DELETE" else None,
                    method=self.command,
                    headers={
                        "Content-Type": self.headers.get("Content-Type", "text/plain")
                    },
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                        status = response.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                stored = time.time()
                if self.command in {"PUT", "POST"}:
                    with recorder._lock:
                        recorder.pushes.append(
                            Push(arrived, stored, body.decode(errors="replace"))
                        )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = _forward
            do_POST = _forward
            do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> PushRecorder:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[Push]:
        with self._lock:
            return list(self.pushes)


@dataclass(frozen=True)
class SeenEvent:
    """One event as a bare subscriber received it."""

    received: float
    raw: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.raw.get("Actor", {}).get("Attributes", {}).get("name", ""))

    @property
    def action(self) -> str:
        return str(self.raw.get("Action", ""))

    @property
    def time_nano(self) -> int:
        return int(self.raw.get("timeNano", 0))

    @property
    def latency(self) -> float:
        """Seconds from the daemon's timestamp to this subscriber's receipt."""
        return self.received - self.time_nano / 1e9


class EventWatcher:
    """A bare subscriber: read the events stream on a thread and record arrival times.

    It uses the monitor's own server-side filters unless ``filters`` is given,
    so its latency is the floor any subscriber of the same stream can reach.
    """

    def __init__(
        self,
        docker_host: str,
        filters: Mapping[str, list[str]] | None = None,
        keep: Callable[[Mapping[str, Any]], bool] = lambda _raw: True,
    ) -> None:
        self.api = docker.APIClient(base_url=docker_host, version="auto", timeout=30)
        self.filters = dict(filters if filters is not None else EVENT_FILTERS)
        self.keep = keep
        self.events: list[SeenEvent] = []
        self.count = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> EventWatcher:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        self._stream = self.api.events(decode=True, filters=self.filters)
        self._ready.set()
        try:
            for raw in self._stream:
                received = time.time()
                self.count += 1
                if self.keep(raw):
                    with self._lock:
                        self.events.append(SeenEvent(received, raw))
        except Exception:  # noqa: BLE001 - closing the stream ends the loop this way
            return

    def find(self, name: str, action: str, after_nano: int = 0) -> SeenEvent | None:
        """Return the first recorded event of ``name`` and ``action`` after a time."""
        with self._lock:
            for event in self.events:
                if (
                    event.name == name
                    and event.action == action
                    and event.time_nano > after_nano
                ):
                    return event
        return None

    def snapshot(self) -> list[SeenEvent]:
        with self._lock:
            return list(self.events)

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self.api.close()
