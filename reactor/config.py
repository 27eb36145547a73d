"""Configuration read once from the environment into typed, immutable objects.

Nothing else in the project reads ``os.environ``: the CLI builds a settings
object at start and passes it down. Every secret may also be given as
``NAME_FILE``, the path of a file holding it, which is how Docker secrets are
mounted.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from reactor.errors import ConfigError

MASK = "***"
SECRET_FILE_MAX = 64 * 1024

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _parse_bool(value: object) -> object:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("expected true or false")
    return value


def _check_url(value: object) -> object:
    if value is None:
        return None
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("not an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - the property raises on a non-numeric port
    except ValueError as exc:
        raise ValueError("the port is not a number") from exc
    return text


CommaList = Annotated[list[str], BeforeValidator(_split_list)]
Bool = Annotated[bool, BeforeValidator(_parse_bool)]
HttpUrl = Annotated[str | None, BeforeValidator(_check_url)]


def secret(default: Any = None, *, description: str) -> Any:
    """Declare a field whose value is masked in output and may come from NAME_FILE."""
    return Field(default, description=description, json_schema_extra={"secret": True})


class CommonSettings(BaseModel):
    """Settings every worker shares: alert channels, metrics and logging."""

    # Infinity and NaN parse as floats but make no sense as seconds.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    log_level: str = Field(
        "INFO",
        description="one of DEBUG, INFO, WARNING, ERROR",
        pattern="^(?i:debug|info|warning|error)$",
    )
    instance_name: str | None = Field(
        None,
        description="a short host name for alerts and the Pushgateway instance label",
        min_length=1,
        max_length=128,
    )

    slack_webhook_url: HttpUrl = secret(
        description="the https:// URL of a Slack incoming webhook"
    )

    smtp_host: str | None = Field(None, description="the SMTP server's host name")
    smtp_port: int = Field(587, ge=1, le=65535, description="a TCP port, e.g. 587")
    smtp_username: str | None = Field(None, description="the SMTP login name")
    smtp_password: str | None = secret(description="the SMTP password")
    smtp_starttls: Bool = Field(True, description="true or false")
    smtp_ssl: Bool = Field(False, description="true or false")
    smtp_from: str | None = Field(
        None,
        description="a sender address such as alerts@example.com",
        pattern="^[^@\\s]+@[^@\\s]+$",
    )
    smtp_timeout: float = Field(10.0, gt=0, description="a number of seconds above 0")
    alert_email_to: CommaList = Field(
        default_factory=list,
        description="comma-separated addresses such as ops@example.com,dba@example.com",
    )

    prometheus_pushgateway: HttpUrl = Field(
        None, description="the Pushgateway's http:// or https:// URL"
    )

    shutdown_timeout: float = Field(
        10.0,
        gt=0,
        description="a number of seconds above 0 to wait for alerts in flight",
    )

    @model_validator(mode="after")
    def _check_email(self) -> CommonSettings:
        if self.smtp_host:
            if not self.alert_email_to:
                raise ValueError(
                    "ALERT_EMAIL_TO is missing; SMTP_HOST is set, "
                    "so give at least one recipient address"
                )
            for address in self.alert_email_to:
                if "@" not in address:
                    raise ValueError(
                        f"ALERT_EMAIL_TO: invalid address {address!r}; use name@domain"
                    )
        return self

    @property
    def email_enabled(self) -> bool:
        return bool(self.smtp_host)


class MonitorSettings(CommonSettings):
    """Settings of the health monitor."""

    docker_host: str = Field(
        "unix:///var/run/docker.sock",
        description="a Docker Engine address such as unix:///var/run/docker.sock or tcp://127.0.0.1:2375",
        pattern="^(unix|tcp|http|https|ssh)://.+",
    )
    docker_timeout: int = Field(
        30, ge=1, description="a whole number of seconds, at least 1, for each API call"
    )
    containers_to_monitor: CommaList = Field(
        default_factory=list,
        description="comma-separated container names or globs such as molochain-*",
    )
    check_interval: float = Field(
        60.0, ge=1, description="a number of seconds of at least 1, e.g. 60"
    )
    health_log_dir: Path = Field(
        Path("/var/log/health-monitor"), description="a writable directory path"
    )
    restart_loop_threshold: int = Field(
        3,
        ge=2,
        description="a whole number of at least 2 deaths that make a restart loop",
    )
    restart_loop_window: float = Field(
        300.0,
        gt=0,
        description="a number of seconds above 0 in which deaths are counted",
    )
    restart_loop_stable: float = Field(
        120.0,
        gt=0,
        description="a number of seconds above 0 without a death before a loop is over",
    )

    def selects(self, name: str) -> bool:
        """Tell whether a container name is monitored."""
        if not self.containers_to_monitor:
            return True
        return any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.containers_to_monitor
        )

    @property
    def explicit_names(self) -> list[str]:
        """Names without glob characters: these must exist, or they are down."""
        return [p for p in self.containers_to_monitor if not any(c in p for c in "*?[")]


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def secret_fields(model: type[BaseModel]) -> set[str]:
    """Return the names of the fields declared with :func:`secret`."""
    names = set()
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("secret"):
            names.add(name)
    return names


def _read_secret_file(variable: str, path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(SECRET_FILE_MAX + 1)
    except OSError as exc:
        raise ConfigError(
            f"{variable}_FILE={path!r} cannot be read ({exc.strerror}); "
            f"mount the secret there or unset {variable}_FILE"
        ) from exc
    if len(data) > SECRET_FILE_MAX:
        raise ConfigError(
            f"{variable}_FILE={path!r} is larger than {SECRET_FILE_MAX} bytes; "
            "point it at the file that holds only the secret"
        )
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{variable}_FILE={path!r} is not UTF-8 text; "
            "write the secret as plain text"
        ) from exc


def load(model: type[SettingsT], environ: Mapping[str, str] | None = None) -> SettingsT:
    """Build ``model`` from environment variables named after its fields.

    An empty value counts as unset, so compose files can pass ``${VAR:-}``.
    Raises :class:`ConfigError` with one line naming the variable, the value
    and what to set instead.
    """
    env = os.environ if environ is None else environ
    secrets = secret_fields(model)
    values: dict[str, str] = {}
    for name in model.model_fields:
        variable = name.upper()
        raw = env.get(variable, "")
        if name in secrets:
            path = env.get(f"{variable}_FILE", "")
            if path and raw:
                raise ConfigError(
                    f"both {variable} and {variable}_FILE are set; keep only one"
                )
            if path:
                raw = _read_secret_file(variable, path)
        if raw.strip() != "":
            values[name] = raw
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(model, exc, values, secrets)) from exc


def _describe(
    model: type[BaseModel],
    exc: ValidationError,
    values: Mapping[str, str],
    secrets: set[str],
) -> str:
    error = exc.errors()[0]
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not error.get("loc"):
        # A cross-field rule: its message already names the variables.
        return message
    name = str(error["loc"][0])
    variable = name.upper()
    field = model.model_fields.get(name)
    hint = (
        field.description
        if field is not None and field.description
        else "a valid value"
    )
    shown = MASK if name in secrets else repr(values.get(name, ""))
    if error.get("type") == "string_pattern_mismatch":
        # pydantic's text quotes the regular expression, which the hint replaces.
        message = "not in the accepted form"
    reason = message[:1].lower() + message[1:]
    return f"{variable}={shown} is invalid: {reason}; set it to {hint}"


def url_secrets(url: str) -> list[str]:
    """Return the parts of a secret URL that are secret on their own.

    A webhook URL's path carries its token, and an error page may echo the
    path without the host, so the path and its last segment are masked too.
    """
    path = urlsplit(url).path.rstrip("/")
    parts = [url]
    if len(path) > 1:
        parts.append(path)
        last = path.rsplit("/", 1)[-1]
        if len(last) >= 8:
            parts.append(last)
    return parts


def secret_values(settings: BaseModel) -> list[str]:
    """Return every secret value of ``settings``, for the log masking."""
    values: list[str] = []
    for name in sorted(secret_fields(type(settings))):
        value = getattr(settings, name, None)
        if not value:
            continue
        text = str(value)
        values.extend(url_secrets(text) if "://" in text else [text])
    return values


def describe_settings(settings: BaseModel) -> dict[str, object]:
    """Return the effective settings by variable name, with secrets masked."""
    secrets = secret_fields(type(settings))
    shown: dict[str, object] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name in secrets and value:
            value = MASK
        elif isinstance(value, Path):
            value = str(value)
        shown[name.upper()] = value
    return shown
