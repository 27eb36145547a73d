"""Run a worker as a real subprocess and read its JSON log lines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for

EXECUTABLE = str(Path(sys.executable).with_name("molochain-workers"))


class WorkerProcess:
    """``molochain-workers ARGS`` with a clean environment plus ``env``."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.args = args
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> WorkerProcess:
        self.process = subprocess.Popen(
            [EXECUTABLE, *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.raw.append(line)
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(line))

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [line for line in self.lines if line.get("event") == name]

    def wait_event(
        self, name: str, count: int = 1, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        def enough() -> bool:
            return len(self.events(name)) >= count

        wait_for(
            enough,
            timeout=timeout,
            what=f"{count} '{name}' log line(s); output:\n{self.output()[-3000:]}",
        )
        return self.events(name)

    def output(self) -> str:
        with self._lock:
            return "".join(self.raw)

    def stop(self, timeout: float = 20.0) -> int:
        """Send SIGTERM and return the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_once(
    args: list[str], env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its output."""
    return subprocess.run(
        [EXECUTABLE, *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
