"""compose/docker-compose.yml as Debian's docker-compose 1.29 resolves it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from handlers.backup.settings import BackupSettings
from reactor.config import MonitorSettings, load, secret_fields
from tests.deploy.conftest import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    compose_config,
    read_env_file,
)

WORKERS = ("backup-worker", "health-monitor")

# Compose fixes the instance name that the workers would otherwise derive
# from their host name, which in a container is the container ID.
DEFAULT_INSTANCE = "molochain"

# The backup worker's settings and their defaults, as the README lists them.
BACKUP_DEFAULTS = {
    "BACKUP_SCHEDULE": "0 2 * * *",
    "TZ": "UTC",
    "BACKUP_MISFIRE_GRACE": "3600",
    "PGHOST": "molochain-postgres",
    "PGPORT": "5432",
    "PGUSER": "molochain",
    "PGPASSWORD_FILE": "/run/secrets/pgpassword",
    "BACKUP_DATABASES": "",
    "BACKUP_FORMAT": "custom",
    "BACKUP_COMPRESSION_LEVEL": "9",
    "BACKUP_DIR": "/backups",
    "BACKUP_RETENTION_DAYS": "30",
    "BACKUP_WEEKLY_RETENTION": "8",
    "BACKUP_MONTHLY_RETENTION": "6",
    "BACKUP_KEEP_MIN": "3",
    "BACKUP_NOTIFY_SUCCESS": "true",
}


@pytest.fixture(scope="module")
def default_config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    empty = tmp_path_factory.mktemp("env") / "empty.env"
    empty.write_text("", encoding="utf-8")
    return compose_config(empty)


@pytest.fixture(scope="module")
def example_config() -> Any:
    return compose_config(ENV_EXAMPLE)


def environment(config: Any, service: str) -> dict[str, str]:
    env = config["services"][service]["environment"]
    return {key: "" if value is None else str(value) for key, value in env.items()}


def without_secret_files(env: dict[str, str]) -> dict[str, str]:
    # The /run/secrets files exist only inside the container.
    return {key: value for key, value in env.items() if not key.endswith("_FILE")}


def worker_defaults(env: dict[str, str]) -> dict[str, str]:
    """Return the variables whose compose default is the worker's own default."""
    found = without_secret_files(env)
    assert found.pop("INSTANCE_NAME") == DEFAULT_INSTANCE
    return found


def mounts(config: Any, service: str) -> dict[str, dict[str, Any]]:
    """Return the service's volumes by container path."""
    found = {}
    for entry in config["services"][service].get("volumes", []):
        volume = entry
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            volume = {
                "source": source,
                "target": target,
                "read_only": mode == ["ro"],
            }
        found[volume["target"]] = volume
    return found


def test_services_and_profiles(default_config: Any) -> None:
    services = default_config["services"]
    assert set(services) == {
        "backup-worker",
        "health-monitor",
        "log-aggregator",
        "log-aggregator-alloy",
    }
    assert "profiles" not in services["backup-worker"]
    assert "profiles" not in services["health-monitor"]
    assert services["log-aggregator"]["profiles"] == ["promtail"]
    assert services["log-aggregator-alloy"]["profiles"] == ["alloy"]


@pytest.mark.parametrize("service", WORKERS)
def test_worker_service_settings(default_config: Any, service: str) -> None:
    spec = default_config["services"][service]
    assert spec["image"] == "molochain-workers:latest"
    assert spec["build"]["dockerfile"] == "compose/Dockerfile"
    assert spec["command"] == [service]
    assert spec["restart"] == "unless-stopped"
    assert spec["healthcheck"]["test"] == [
        "CMD",
        "molochain-workers",
        "healthcheck",
        service,
    ]
    assert spec["logging"]["driver"] == "json-file"
    assert spec["logging"]["options"]["max-size"] == "10m"
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"]


def test_log_collectors_pinned(default_config: Any) -> None:
    for service in ("log-aggregator", "log-aggregator-alloy"):
        spec = default_config["services"][service]
        image = spec["image"]
        assert re.fullmatch(r"grafana/(promtail|alloy):v?\d+\.\d+\.\d+", image), image
        assert spec["restart"] == "unless-stopped"
        assert spec["logging"]["driver"] == "json-file"
    promtail = default_config["services"]["log-aggregator"]
    assert "-config.expand-env=true" in promtail["command"]


def test_volumes_and_networks(default_config: Any) -> None:
    assert set(default_config["volumes"]) == {
        "backup-data",
        "health-logs",
        "log-positions",
    }
    for network in ("molochain-network", "postgres-network"):
        assert default_config["networks"][network]["external"] is True
    assert mounts(default_config, "backup-worker")["/backups"]["source"] == (
        "backup-data"
    )
    monitor = mounts(default_config, "health-monitor")
    assert monitor["/var/log/health-monitor"]["source"] == "health-logs"
    assert monitor["/var/run/docker.sock"]["source"] == "/var/run/docker.sock"
    assert monitor["/var/run/docker.sock"]["read_only"] is True
    assert "postgres-network" in default_config["services"]["backup-worker"]["networks"]


@pytest.mark.parametrize("service", ["log-aggregator", "log-aggregator-alloy"])
def test_collector_reads_worker_logs(default_config: Any, service: str) -> None:
    found = mounts(default_config, service)
    assert found["/backups"]["source"] == "backup-data"
    assert found["/backups"]["read_only"] is True
    assert found["/var/log/health-monitor"]["source"] == "health-logs"
    assert found["/var/log/health-monitor"]["read_only"] is True
    assert found["/var/run/docker.sock"]["read_only"] is True
    assert found["/var/lib/log-positions"]["source"] == "log-positions"


def variables(model: type[BaseModel]) -> list[str]:
    """Return the environment variables a settings model reads, secrets as NAME_FILE."""
    secrets = secret_fields(model)
    return [
        f"{name.upper()}_FILE" if name in secrets else name.upper()
        for name in model.model_fields
    ]


def test_monitor_defaults_match_settings(default_config: Any) -> None:
    env = environment(default_config, "health-monitor")
    for variable in variables(MonitorSettings):
        assert variable in env, f"{variable} is missing from health-monitor"
    assert load(MonitorSettings, worker_defaults(env)) == load(MonitorSettings, {})


def test_backup_defaults_match_readme(default_config: Any) -> None:
    env = environment(default_config, "backup-worker")
    for variable, default in BACKUP_DEFAULTS.items():
        assert env.get(variable) == default, variable
    for variable in variables(BackupSettings):
        assert variable in env, f"{variable} is missing from backup-worker"
    # PGPASSWORD has no default, so both sides get the same one.
    password = {"PGPASSWORD": "compose-test"}
    from_compose = load(BackupSettings, {**worker_defaults(env), **password})
    assert from_compose == load(BackupSettings, password)


def test_secrets_come_from_files(default_config: Any) -> None:
    secrets = default_config["secrets"]
    assert set(secrets) == {"pgpassword", "slack_webhook_url", "smtp_password"}
    for service in WORKERS:
        env = environment(default_config, service)
        for secret in default_config["services"][service]["secrets"]:
            name = secret if isinstance(secret, str) else secret["source"]
            assert env[f"{name.upper()}_FILE"] == f"/run/secrets/{name}"
            assert name.upper() not in env


def test_example_env_accepted(example_config: Any) -> None:
    monitor = environment(example_config, "health-monitor")
    assert monitor["CONTAINERS_TO_MONITOR"] == "molochain-*"
    settings = load(MonitorSettings, without_secret_files(monitor))
    assert settings.selects("molochain-postgres")
    backup = environment(example_config, "backup-worker")
    for variable, default in BACKUP_DEFAULTS.items():
        assert backup.get(variable) == default, variable


@pytest.mark.parametrize("source", ["defaults", "example"])
def test_workers_share_fixed_instance(
    default_config: Any, example_config: Any, source: str
) -> None:
    config = default_config if source == "defaults" else example_config
    for service in WORKERS:
        assert environment(config, service)["INSTANCE_NAME"] == DEFAULT_INSTANCE


def test_instance_name_reaches_both_workers(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    env_file.write_text("INSTANCE_NAME=db-host-1\n", encoding="utf-8")
    config = compose_config(env_file)
    for service in WORKERS:
        assert environment(config, service)["INSTANCE_NAME"] == "db-host-1"


def test_example_env_covers_variables() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = set(read_env_file(ENV_EXAMPLE))
    assert used - example == set(), "variables missing from .env.example"
    assert example - used - {"COMPOSE_PROFILES"} == set(), "unused .env entries"


def test_secrets_dir_override(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    env_file.write_text(f"SECRETS_DIR={tmp_path}\n", encoding="utf-8")
    config = compose_config(env_file)
    assert config["secrets"]["pgpassword"]["file"] == str(tmp_path / "pgpassword")
