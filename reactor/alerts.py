"""The alert every worker raises, and the table of alert types."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class AlertType(enum.StrEnum):
    """Severity of an alert; the same table serves every worker."""

    INFO = "info"
    """Recovery or success."""
    WARNING = "warning"
    """Degraded, such as an unhealthy container."""
    ERROR = "error"
    """Failure, or a container down."""

    @property
    def slack_color(self) -> str:
        return _SLACK_COLORS[self]

    @property
    def emoji(self) -> str:
        return _EMOJI[self]


_SLACK_COLORS = {
    AlertType.INFO: "good",
    AlertType.WARNING: "warning",
    AlertType.ERROR: "danger",
}

_EMOJI = {
    AlertType.INFO: ":large_green_circle:",
    AlertType.WARNING: ":warning:",
    AlertType.ERROR: ":red_circle:",
}


@dataclass(frozen=True, slots=True)
class Alert:
    """One message for the operators, rendered by each notifier channel."""

    type: AlertType
    title: str
    text: str
    worker: str
    host: str
    subject: str
    """The container or database the alert is about."""
    fields: tuple[tuple[str, str], ...] = ()
    """Ordered facts shown as a table: image, exit code, probe output..."""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    kind: str = "transition"
    """A stable machine-readable name such as ``down`` or ``backup_failed``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "title": self.title,
            "text": self.text,
            "worker": self.worker,
            "host": self.host,
            "subject": self.subject,
            "fields": [list(pair) for pair in self.fields],
            "time": self.time.isoformat(),
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(
            type=AlertType(data["type"]),
            title=str(data["title"]),
            text=str(data["text"]),
            worker=str(data["worker"]),
            host=str(data["host"]),
            subject=str(data["subject"]),
            fields=tuple((str(k), str(v)) for k, v in data.get("fields", [])),
            time=datetime.fromisoformat(data["time"]),
            kind=str(data.get("kind", "transition")),
        )

    def fallback(self) -> str:
        """Return the one-line plain text used where rich formatting is not shown."""
        return f"[{self.type.value.upper()}] {self.title} on {self.host}"
