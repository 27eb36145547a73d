"""The command line: exit codes, messages and the check and healthcheck commands."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.smtp import SmtpServer
from tests.support.worker import run_once

BAD_SETTINGS = [
    ("CHECK_INTERVAL", "abc"),
    ("CHECK_INTERVAL", "-5"),
    ("SLACK_WEBHOOK_URL", "not-a-url"),
    ("PROMETHEUS_PUSHGATEWAY", "localhost:9091"),
    ("SMTP_PORT", "smtp"),
    ("DOCKER_TIMEOUT", "0"),
    ("RESTART_LOOP_WINDOW", "soon"),
    ("SHUTDOWN_TIMEOUT", "-1"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS)
def test_bad_setting_exits_2(tmp_path: Path, variable: str, value: str) -> None:
    result = run_once(
        ["health-monitor"], {"HEALTH_LOG_DIR": str(tmp_path), variable: value}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"molochain-workers: error: {variable}=")
    assert "set it to" in lines[0]
    if variable == "SLACK_WEBHOOK_URL":
        assert value not in lines[0]
    else:
        assert repr(value) in lines[0]
    assert not (tmp_path / "state.json").exists()


def test_unwritable_log_dir_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_once(["health-monitor"], {"HEALTH_LOG_DIR": str(blocker / "sub")})
    assert result.returncode == 2
    assert "cannot be opened" in result.stderr


@pytest.mark.docker
def test_check_reports_each_connection(
    tmp_path: Path, docker_host: str, pushgateway_url: str, smtp: SmtpServer
) -> None:
    webhook = "https://hooks.slack.example/services/T/B/very-secret"
    env = {
        "DOCKER_HOST": docker_host,
        "HEALTH_LOG_DIR": str(tmp_path),
        "PROMETHEUS_PUSHGATEWAY": pushgateway_url,
        "SLACK_WEBHOOK_URL": webhook,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_STARTTLS": "false",
        "ALERT_EMAIL_TO": "ops@example.test",
    }
    result = run_once(["check"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "very-secret" not in result.stdout
    assert '"SLACK_WEBHOOK_URL": "***"' in result.stdout
    assert "ok     docker:" in result.stdout
    assert "ok     pushgateway:" in result.stdout
    assert "ok     smtp: 127.0.0.1" in result.stdout
    assert smtp.messages == []


def test_check_fails_on_unreachable_services(tmp_path: Path) -> None:
    env = {
        "DOCKER_HOST": f"unix://{tmp_path}/absent.sock",
        "HEALTH_LOG_DIR": str(tmp_path),
        "PROMETHEUS_PUSHGATEWAY": "http://127.0.0.1:9",
    }
    result = run_once(["check"], env)
    assert result.returncode == 1
    assert "FAILED docker:" in result.stdout
    assert "FAILED pushgateway:" in result.stdout


def test_healthcheck_reads_heartbeat(tmp_path: Path) -> None:
    env = {"HEALTH_LOG_DIR": str(tmp_path), "CHECK_INTERVAL": "10"}
    missing = run_once(["healthcheck"], env)
    assert missing.returncode == 1
    assert "no heartbeat" in missing.stdout

    heartbeat = tmp_path / "heartbeat"
    heartbeat.write_text("0\n")
    assert run_once(["healthcheck"], env).returncode == 0

    stale = time.time() - 120
    os.utime(heartbeat, (stale, stale))
    result = run_once(["healthcheck"], env)
    assert result.returncode == 1
    assert "limit 60 s" in result.stdout
