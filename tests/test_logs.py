"""JSON log lines and secret masking."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from reactor.config import MonitorSettings, load, secret_values
from reactor.logs import setup_logging


def test_lines_are_json_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "https://hooks.slack.com/services/T0/B0/abc"
    log_file = tmp_path / "logs" / "worker.log"
    setup_logging("health-monitor", "INFO", log_file, secrets=[secret])
    try:
        logging.getLogger("test").warning(
            "posting to %s failed",
            secret,
            extra={"event": "alert_failed", "container": "web"},
        )
        try:
            raise ConnectionError(f"cannot reach {secret}")
        except ConnectionError:
            logging.getLogger("test").exception("caught", extra={"event": "error"})
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()

    lines = log_file.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["message"] == "posting to *** failed"
    assert first["event"] == "alert_failed"
    assert first["container"] == "web"
    assert first["worker"] == "health-monitor"
    assert first["level"] == "WARNING"
    assert "time" in first
    assert secret not in log_file.read_text()
    assert secret not in capsys.readouterr().out
    logging.getLogger().handlers.clear()


def test_secret_is_masked_only_as_a_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("backup-worker", "INFO", None, secrets=["hunter2"])
    logging.getLogger("test").info("hunter2, hunter2-up and hunter22")
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["message"] == "***, ***-up and hunter22"
    logging.getLogger().handlers.clear()


def test_short_secret_is_masked_only_as_whole_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("backup-worker", "INFO", None, secrets=["x"])
    logger = logging.getLogger("test")
    logger.info("x", extra={"database": "-atk-dash=x", "password": "x"})
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["message"] == "***"
    assert line["password"] == "***"
    assert line["database"] == "-atk-dash=x"
    logging.getLogger().handlers.clear()


def test_webhook_path_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    settings = load(
        MonitorSettings,
        {
            "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T01/B01/XyZsecretToken"
        },
    )
    setup_logging("health-monitor", "INFO", None, secrets=secret_values(settings))
    logging.getLogger("test").error(
        "Cannot POST /services/T01/B01/XyZsecretToken",
        extra={"token": "XyZsecretToken"},
    )
    out = capsys.readouterr().out
    assert "XyZsecretToken" not in out
    assert "Cannot POST ***" in out
    logging.getLogger().handlers.clear()


def test_log_file_failure_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "worker.log"
    setup_logging("health-monitor", "INFO", log_file)
    try:
        [handler] = [
            h for h in logging.getLogger().handlers if hasattr(h, "baseFilename")
        ]
        assert isinstance(handler, logging.FileHandler)
        assert handler.stream is not None
        handler.stream.close()
        logging.getLogger("test").info("first")
        logging.getLogger("test").info("second")
    finally:
        logging.getLogger().handlers.clear()
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1
    report = json.loads(errors[0])
    assert report["event"] == "log_write_failed"
    assert report["path"] == str(log_file)
    assert "Traceback" not in errors[0]
