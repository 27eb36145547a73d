"""promtail/config.yml and config.alloy against log lines the workers really write."""

from __future__ import annotations

import fnmatch
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import re2
import yaml

from reactor.alerts import AlertType
from reactor.config import MonitorSettings, load
from tests.deploy.conftest import ALLOY_CONFIG, PROMTAIL_CONFIG, BackupRun
from tests.support.docker_env import Containers
from tests.support.monitoring import StartMonitor
from tests.support.slack import SlackReceiver
from tests.support.waiting import wait_for

# RFC 3339 as Go's time.RFC3339Nano layout parses it: a fraction of any
# length, and Z or a numeric offset.
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")

LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}

# label="value", label=~"regex", label!="value" or label!~"regex" inside {}.
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
# A line filter: |= |~ != !~ followed by a "string" or a `raw string`.
LINE_FILTER = re.compile(r'(\|=|\|~|!=|!~)\s*(?:"((?:[^"\\]|\\.)*)"|`([^`]*)`)')


def promtail() -> Any:
    return yaml.safe_load(PROMTAIL_CONFIG.read_text(encoding="utf-8"))


def job(name: str) -> dict[str, Any]:
    [found] = [j for j in promtail()["scrape_configs"] if j["job_name"] == name]
    return dict(found)


def stages(job_config: dict[str, Any], kind: str) -> list[Any]:
    return [stage[kind] for stage in job_config["pipeline_stages"] if kind in stage]


def unquote(value: str) -> str:
    """Undo the escapes of a LogQL double-quoted string."""
    return str(json.loads(f'"{value}"'))


def selector_regexes(selector: str) -> list[str]:
    """Return the regexes of a LogQL selector's =~ and !~ matchers and |~ filters."""
    stream, _, filters = selector.partition("}")
    found = [
        unquote(value)
        for _, operator, value in MATCHER.findall(stream)
        if operator in {"=~", "!~"}
    ]
    for operator, quoted, raw in LINE_FILTER.findall(filters):
        if operator in {"|~", "!~"}:
            found.append(raw if raw else unquote(quoted))
    return found


def drop_selector() -> str:
    [match] = stages(job("docker"), "match")
    assert match["action"] == "drop"
    return str(match["selector"])


def promtail_regexes() -> list[str]:
    found = []
    for job_config in promtail()["scrape_configs"]:
        for rule in job_config.get("relabel_configs", []):
            if "regex" in rule:
                found.append(rule["regex"])
        for stage in job_config.get("pipeline_stages", []):
            for kind in ("regex", "replace"):
                if kind in stage:
                    found.append(stage[kind]["expression"])
            if "match" in stage:
                found.extend(selector_regexes(stage["match"]["selector"]))
    return found


def test_promtail_regexes_compile_under_re2() -> None:
    regexes = promtail_regexes()
    assert len(regexes) >= 3
    for regex in regexes:
        # Prometheus-style relabelling anchors the regex at both ends.
        re2.compile(f"^(?:{regex})$")


def test_docker_job_relabelling() -> None:
    docker = job("docker")
    assert docker["docker_sd_configs"][0]["host"] == "unix:///var/run/docker.sock"
    assert all("docker" not in stage for stage in docker["pipeline_stages"])
    targets = {rule["target_label"]: rule for rule in docker["relabel_configs"]}
    assert set(targets) == {
        "job",
        "container",
        "compose_service",
        "compose_project",
        "stream",
    }
    name_rule = targets["container"]
    assert name_rule["source_labels"] == ["__meta_docker_container_name"]
    match = re2.fullmatch(name_rule["regex"], "/molochain-postgres")
    assert match is not None
    assert match.group(1) == "molochain-postgres"


def test_loki_url_from_environment() -> None:
    assert promtail()["clients"] == [{"url": "${LOKI_URL}"}]
    assert 'sys.env("LOKI_URL")' in ALLOY_CONFIG.read_text(encoding="utf-8")


def test_worker_files_job_paths() -> None:
    workers = job("workers")
    paths = {target["labels"]["__path__"] for target in workers["static_configs"]}
    assert paths == {"/backups/*.log", "/var/log/health-monitor/*.log"}
    monitor_log = load(MonitorSettings, {}).health_log_dir / "health-monitor.log"
    assert any(fnmatch.fnmatch(str(monitor_log), path) for path in paths)
    # The backup worker writes BACKUP_DIR/backup.log, BACKUP_DIR=/backups.
    assert any(fnmatch.fnmatch("/backups/backup.log", path) for path in paths)


def pipeline_fields() -> tuple[dict[str, str], dict[str, Any], list[str]]:
    workers = job("workers")
    [json_stage] = stages(workers, "json")
    [timestamp] = stages(workers, "timestamp")
    [labels] = stages(workers, "labels")
    return dict(json_stage["expressions"]), dict(timestamp), list(labels)


@pytest.mark.docker
def test_pipeline_matches_monitor_log(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
    slack: SlackReceiver,
) -> None:
    name = containers.run("web")
    worker = start_monitor(monitor_env)
    containers.api.stop(name, timeout=1)
    wait_for(lambda: slack.accepted, what="an alert at the Slack receiver")
    worker.wait_event("alert_sent")
    worker.stop()

    lines = read_json_lines(Path(monitor_env["HEALTH_LOG_DIR"]) / "health-monitor.log")
    check_pipeline_fields(lines, "health-monitor")
    alert_types = {line["alert_type"] for line in lines if "alert_type" in line}
    assert alert_types <= {member.value for member in AlertType}
    assert alert_types


@pytest.mark.postgres
def test_pipeline_matches_backup_log(backup_run: BackupRun) -> None:
    lines = read_json_lines(backup_run.log_file)
    check_pipeline_fields(lines, "backup-worker")
    databases = {line["database"] for line in lines if "database" in line}
    assert backup_run.database in databases


def read_json_lines(log_file: Path) -> list[dict[str, Any]]:
    lines = [
        json.loads(line)
        for line in log_file.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    assert lines, f"{log_file} is empty"
    return lines


def check_pipeline_fields(lines: list[dict[str, Any]], worker: str) -> None:
    """Check that every field and label the pipeline reads is in the log lines."""
    expressions, timestamp, labels = pipeline_fields()
    assert timestamp["source"] in expressions
    assert timestamp["format"] == "RFC3339Nano"
    assert set(labels) <= set(expressions)
    for line in lines:
        # Third-party loggers such as asyncio write lines without an event.
        for field in ("time", "level", "worker", "logger", "message"):
            assert field in line, f"{field} missing from {line}"
        assert RFC3339.fullmatch(line["time"]), line["time"]
        assert datetime.fromisoformat(line["time"]).tzinfo is not None
        assert line["level"] in LEVELS
        assert line["worker"] == worker
    for field in expressions.values():
        assert any(field in line for line in lines), f"no line carries {field}"


@pytest.mark.docker
def test_drop_selector_skips_only_json(
    containers: Containers,
    monitor_env: dict[str, str],
    start_monitor: StartMonitor,
) -> None:
    containers.run("web")
    worker = start_monitor(monitor_env)
    worker.stop()
    stdout_lines = [line.rstrip("\n") for line in worker.raw if line.strip()]
    assert stdout_lines

    stream, _, _ = drop_selector().partition("}")
    matchers = {label: unquote(value) for label, _, value in MATCHER.findall(stream)}
    assert re2.fullmatch(matchers["compose_service"], "health-monitor")
    assert re2.fullmatch(matchers["compose_service"], "backup-worker")
    assert not re2.fullmatch(matchers["compose_service"], "log-aggregator")

    [line_regex] = [
        regex
        for regex in selector_regexes(drop_selector())
        if regex != matchers["compose_service"]
    ]
    for line in stdout_lines:
        assert re2.search(line_regex, line), f"kept in the docker job: {line}"
    traceback = "Traceback (most recent call last):"
    assert not re2.search(line_regex, traceback)
    config_error = "molochain-workers: error: CHECK_INTERVAL='0' is invalid"
    assert not re2.search(line_regex, config_error)


# --- Alloy -----------------------------------------------------------------


def alloy_text() -> str:
    return ALLOY_CONFIG.read_text(encoding="utf-8")


def alloy_string(value: str) -> str:
    """Undo the escapes of an Alloy double-quoted string (Go syntax)."""
    return str(json.loads(f'"{value}"'))


def alloy_block(kind: str, label: str) -> str:
    """Return the body of ``kind "label" { ... }`` with nested braces balanced."""
    text = alloy_text()
    start = text.index(f'{kind} "{label}" {{')
    depth = 0
    quote = ""
    index = text.index("{", start)
    while index < len(text):
        char = text[index]
        if quote:
            # Braces inside a string literal do not count.
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in '"`':
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:index]
        index += 1
    raise AssertionError(f"{kind} {label!r} is not closed")


def alloy_rules() -> dict[str, dict[str, str]]:
    body = alloy_block("discovery.relabel", "containers")
    rules = {}
    for rule in re.findall(r"rule \{(.*?)\n  \}", body, re.S):
        fields = dict(re.findall(r'(\w+)\s*=\s*(\[.*?\]|"(?:[^"\\]|\\.)*")', rule))
        rules[alloy_string(fields["target_label"][1:-1])] = fields
    return rules


def test_alloy_relabelling_matches_promtail() -> None:
    promtail_rules = {
        rule["target_label"]: rule
        for rule in job("docker")["relabel_configs"]
        if "source_labels" in rule
    }
    rules = alloy_rules()
    assert set(rules) == set(promtail_rules)
    for label, rule in promtail_rules.items():
        assert json.loads(rules[label]["source_labels"]) == rule["source_labels"]
        if "regex" in rule:
            regex = alloy_string(rules[label]["regex"][1:-1])
            assert regex == rule["regex"]
            re2.compile(regex)
    assert '"job" = "docker"' in alloy_block("loki.source.docker", "containers")


def test_alloy_sources_match_promtail() -> None:
    files = alloy_block("local.file_match", "workers")
    paths = set(re.findall(r'"__path__" = "([^"]+)"', files))
    promtail_paths = {
        target["labels"]["__path__"] for target in job("workers")["static_configs"]
    }
    assert paths == promtail_paths
    assert "discovery.docker.containers.targets" in alloy_block(
        "loki.source.docker", "containers"
    )
    assert "local.file_match.workers.targets" in alloy_block(
        "loki.source.file", "workers"
    )


def test_alloy_pipeline_matches_promtail() -> None:
    body = alloy_block("loki.process", "workers")
    expressions, timestamp, labels = pipeline_fields()
    json_stage = body[body.index("stage.json") : body.index("stage.timestamp")]
    assert dict(re.findall(r'(\w+)\s*=\s*"(\w+)"', json_stage)) == expressions
    assert f'source = "{timestamp["source"]}"' in body
    assert f'format = "{timestamp["format"]}"' in body
    label_stage = body[body.index("stage.labels") :]
    assert set(re.findall(r'(\w+)\s*=\s*""', label_stage)) == set(labels)

    drop = alloy_block("loki.process", "containers")
    [selector] = re.findall(r'selector\s*=\s*"((?:[^"\\]|\\.)*)"', drop)
    assert alloy_string(selector) == drop_selector()
    assert 'action              = "drop"' in drop
