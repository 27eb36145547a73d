"""Read what a Pushgateway holds, and run private ones that tests may stop."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import wait_for


def read_samples(gateway: str, name: str, **labels: str) -> dict[str, float]:
    """Return ``{other_labels: value}`` for the samples matching ``labels``.

    The key is the sample's labels rendered as ``k=v,...`` minus the labels
    that were matched, so single-label series read as ``container=web``.
    """
    try:
        url = f"{gateway}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - http URL
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != name:
                continue
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            rest = {
                k: v
                for k, v in sample.labels.items()
                if k not in labels and k not in {"job", "instance"}
            }
            key = ",".join(f"{k}={v}" for k, v in sorted(rest.items()))
            found[key] = sample.value
    return found


def delete_group(gateway: str, job: str, instance: str) -> None:
    url = f"{gateway}/metrics/job/{job}/instance/{instance}"
    request = urllib.request.Request(url, method="DELETE")  # noqa: S310 - http URL
    with contextlib.suppress(urllib.error.URLError, OSError):
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivatePushgateway:
    """A Pushgateway process of a test's own, so the test can stop and restart it."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrivatePushgateway:
        binary = shutil.which("prometheus-pushgateway")
        assert binary, (
            "prometheus-pushgateway is not installed; run scripts/test-env.sh"
        )
        log = (self.directory / f"pushgateway-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log,
            stderr=log,
        )
        wait_for(self._ready, timeout=10, what="the private Pushgateway")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
