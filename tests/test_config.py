"""Reading settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from reactor.config import MASK, MonitorSettings, describe_settings, load
from reactor.errors import ConfigError


def test_defaults() -> None:
    settings = load(MonitorSettings, {})
    assert settings.check_interval == 60.0
    assert settings.health_log_dir == Path("/var/log/health-monitor")
    assert settings.docker_host == "unix:///var/run/docker.sock"
    assert settings.containers_to_monitor == []
    assert settings.smtp_port == 587
    assert settings.smtp_starttls is True
    assert settings.smtp_ssl is False
    assert settings.slack_webhook_url is None
    assert settings.prometheus_pushgateway is None
    assert settings.email_enabled is False


def test_values_are_parsed() -> None:
    settings = load(
        MonitorSettings,
        {
            "CHECK_INTERVAL": "15",
            "CONTAINERS_TO_MONITOR": " molochain-*, postgres ,",
            "SMTP_HOST": "mail.example.com",
            "ALERT_EMAIL_TO": "a@example.com,b@example.com",
            "SMTP_STARTTLS": "no",
            "PROMETHEUS_PUSHGATEWAY": "http://pushgateway:9091",
        },
    )
    assert settings.check_interval == 15.0
    assert settings.containers_to_monitor == ["molochain-*", "postgres"]
    assert settings.alert_email_to == ["a@example.com", "b@example.com"]
    assert settings.smtp_starttls is False
    assert settings.email_enabled is True
    assert settings.prometheus_pushgateway == "http://pushgateway:9091"


def test_empty_value_counts_as_unset() -> None:
    assert load(MonitorSettings, {"CHECK_INTERVAL": ""}).check_interval == 60.0


def test_selection_by_glob_and_name() -> None:
    settings = load(MonitorSettings, {"CONTAINERS_TO_MONITOR": "molochain-*,postgres"})
    assert settings.selects("molochain-api")
    assert settings.selects("postgres")
    assert not settings.selects("postgres-replica")
    assert settings.explicit_names == ["postgres"]
    assert load(MonitorSettings, {}).selects("anything")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CHECK_INTERVAL", "abc", "CHECK_INTERVAL='abc' is invalid"),
        ("CHECK_INTERVAL", "0", "CHECK_INTERVAL='0' is invalid"),
        ("SMTP_PORT", "99999", "SMTP_PORT='99999' is invalid"),
        (
            "PROMETHEUS_PUSHGATEWAY",
            "ftp://gw",
            "PROMETHEUS_PUSHGATEWAY='ftp://gw' is invalid",
        ),
        ("PROMETHEUS_PUSHGATEWAY", "http://gw:port", "the port is not a number"),
        ("DOCKER_HOST", "docker.sock", "DOCKER_HOST='docker.sock' is invalid"),
        ("SMTP_STARTTLS", "maybe", "SMTP_STARTTLS='maybe' is invalid"),
        ("RESTART_LOOP_THRESHOLD", "1", "RESTART_LOOP_THRESHOLD='1' is invalid"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL='loud' is invalid"),
        ("SMTP_FROM", "nobody", "SMTP_FROM='nobody' is invalid"),
        ("CHECK_INTERVAL", "inf", "CHECK_INTERVAL='inf' is invalid"),
        ("SHUTDOWN_TIMEOUT", "nan", "SHUTDOWN_TIMEOUT='nan' is invalid"),
        ("DOCKER_TIMEOUT", "0.5", "DOCKER_TIMEOUT='0.5' is invalid"),
    ],
)
def test_invalid_values_name_the_variable(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(MonitorSettings, {variable: value})
    message = str(caught.value)
    assert expected in message
    assert "set it to" in message
    assert "\n" not in message


def test_secret_value_is_never_shown() -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            MonitorSettings,
            {"SLACK_WEBHOOK_URL": "hooks.slack.com/services/T/B/sekrit"},
        )
    assert "sekrit" not in str(caught.value)
    assert f"SLACK_WEBHOOK_URL={MASK} is invalid" in str(caught.value)


def test_email_needs_recipients() -> None:
    with pytest.raises(ConfigError, match="ALERT_EMAIL_TO is missing"):
        load(MonitorSettings, {"SMTP_HOST": "mail"})


def test_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "webhook"
    secret.write_text("https://hooks.slack.com/services/T/B/x\n")
    settings = load(MonitorSettings, {"SLACK_WEBHOOK_URL_FILE": str(secret)})
    assert settings.slack_webhook_url == "https://hooks.slack.com/services/T/B/x"


def test_secret_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(ConfigError, match=r"SMTP_PASSWORD_FILE=.* cannot be read"):
        load(MonitorSettings, {"SMTP_PASSWORD_FILE": str(path)})


def test_secret_file_not_text(tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe\x00secret")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load(MonitorSettings, {"SLACK_WEBHOOK_URL_FILE": str(path)})


def test_secret_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "huge"
    path.write_bytes(b"a" * 100_000)
    with pytest.raises(ConfigError, match="is larger than"):
        load(MonitorSettings, {"SMTP_PASSWORD_FILE": str(path)})


def test_pattern_errors_hide_the_regex() -> None:
    with pytest.raises(ConfigError) as caught:
        load(MonitorSettings, {"LOG_LEVEL": "verbose"})
    assert "(?i" not in str(caught.value)
    assert "one of DEBUG, INFO, WARNING, ERROR" in str(caught.value)


def test_secret_and_file_both_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep only one"):
        load(
            MonitorSettings,
            {"SMTP_PASSWORD": "x", "SMTP_PASSWORD_FILE": "/run/secrets/x"},
        )


def test_described_settings_mask_secrets() -> None:
    settings = load(
        MonitorSettings,
        {
            "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x",
            "SMTP_PASSWORD": "pw",
        },
    )
    shown = describe_settings(settings)
    assert shown["SLACK_WEBHOOK_URL"] == MASK
    assert shown["SMTP_PASSWORD"] == MASK
    assert shown["CHECK_INTERVAL"] == 60.0
    assert shown["HEALTH_LOG_DIR"] == "/var/log/health-monitor"
