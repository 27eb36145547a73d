"""An in-process Slack webhook receiver that records requests."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request the receiver got, with the status it returned."""

    time: float
    path: str
    body: dict[str, Any]
    status: int


class SlackReceiver:
    """Receive webhook posts on 127.0.0.1; queue responses with :meth:`respond`."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._answers: list[tuple[int, dict[str, str], float]] = []
        self._default: tuple[int, dict[str, str], float] = (200, {}, 0.0)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                arrived = time.time()
                status, headers, delay = receiver._next_answer()
                if delay:
                    time.sleep(delay)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                with receiver._lock:
                    receiver.requests.append(Received(arrived, self.path, body, status))
                text = b"ok" if status == 200 else b"error"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/services/T000/B000/secret-token"

    def start(self) -> SlackReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def respond(
        self, status: int, headers: dict[str, str] | None = None, delay: float = 0.0
    ) -> None:
        """Queue the response to the next request; later requests get the default."""
        with self._lock:
            self._answers.append((status, headers or {}, delay))

    def respond_always(self, status: int, delay: float = 0.0) -> None:
        with self._lock:
            self._default = (status, {}, delay)

    def _next_answer(self) -> tuple[int, dict[str, str], float]:
        with self._lock:
            return self._answers.pop(0) if self._answers else self._default

    @property
    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def attachments(self) -> list[dict[str, Any]]:
        """Every attachment of every accepted message, in order."""
        found = []
        for request in self.accepted:
            found.extend(request.body.get("attachments", []))
        return found
