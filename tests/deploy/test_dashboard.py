"""The Grafana dashboard's queries against metrics the workers really push.

Prometheus at MOLO_TEST_PROMETHEUS scrapes the test Pushgateway every second
with honor_labels, as a production Prometheus would scrape the real one.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from functools import partial
from typing import Any

import pytest

from tests.deploy.conftest import DASHBOARD, BackupRun
from tests.support.docker_env import Containers
from tests.support.monitoring import StartMonitor
from tests.support.services import required_env
from tests.support.slack import SlackReceiver
from tests.support.waiting import wait_for

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def query_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def expand(expr: str, instances: str) -> str:
    """Replace the Grafana variables the way Grafana would before querying."""
    expr = expr.replace("$__rate_interval", "15s")
    return re.sub(r"\$\{?instance\}?", instances, expr)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
        body = json.load(response)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.fixture
def prometheus() -> str:
    return required_env("MOLO_TEST_PROMETHEUS")


def test_dashboard_importable() -> None:
    board = dashboard()
    variables = {item["name"]: item for item in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["datasource"] == DATASOURCE
    assert board["uid"] == "molochain-workers"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in query_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_dashboard_covers_required_metrics() -> None:
    exprs = " ".join(
        target["expr"] for panel in query_panels() for target in panel["targets"]
    )
    for metric in (
        "container_health",
        "health_monitor_containers",
        "alerts_sent_total",
        "alerts_failed_total",
        "backup_last_success_timestamp_seconds",
        "backup_last_size_bytes",
        "backup_last_duration_seconds",
        "push_time_seconds",
    ):
        assert metric in exprs, metric


@pytest.mark.docker
def test_every_panel_returns_data(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
    prometheus: str,
    backup_run: BackupRun,
) -> None:
    containers.run("web")
    stopped = containers.run("db")
    start_monitor(monitor_env)
    containers.api.stop(stopped, timeout=1)
    wait_for(lambda: slack.accepted, what="an alert at the Slack receiver")
    backup_instance = backup_run.instance

    monitor_instance = monitor_env["INSTANCE_NAME"]
    instances = f"{monitor_instance}|{backup_instance}"
    # A one-off ``backup now`` leaves alert counts to the long-running worker,
    # so only the monitor's counts are waited for.
    wait_for(
        partial(
            query, prometheus, f'alerts_sent_total{{instance="{monitor_instance}"}}'
        ),
        timeout=30,
        interval=0.5,
        what=f"Prometheus to scrape the alerts sent by {monitor_instance}",
    )

    label_values = wait_for(
        lambda: query(
            prometheus,
            f'count by (instance) (push_time_seconds{{instance=~"{instances}"}})',
        ),
        timeout=30,
        interval=0.5,
        what="push_time_seconds for both instances",
    )
    assert len(label_values) == 2

    for panel in query_panels():
        for target in panel["targets"]:
            expr = expand(target["expr"], instances)
            wait_for(
                partial(query, prometheus, expr),
                timeout=30,
                interval=0.5,
                what=f"data for panel {panel['title']!r}: {expr}",
            )
