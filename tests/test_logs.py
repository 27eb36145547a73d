"""JSON log lines and secret masking."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

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


def test_short_secret_is_masked_only_as_a_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("backup-worker", "INFO", None, secrets=["fix"])
    logging.getLogger("test").info("prefix fix, fix-up and fixed")
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["message"] == "prefix ***, ***-up and fixed"
    logging.getLogger().handlers.clear()
