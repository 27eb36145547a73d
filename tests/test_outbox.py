"""Saving undelivered alerts across restarts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handlers.outbox import Outbox
from reactor.alerts import Alert, AlertType
from reactor.errors import ConfigError


def alert(subject: str) -> Alert:
    return Alert(
        type=AlertType.WARNING,
        title=f"{subject} is unhealthy",
        text="probe failed",
        worker="health-monitor",
        host="node-1",
        subject=subject,
        fields=(("Container", subject), ("Health check output", "timeout")),
        time=datetime(2026, 12, 4, 15, 0, tzinfo=UTC),
        kind="degraded",
    )


def test_alert_round_trips() -> None:
    original = alert("web")
    assert Alert.from_dict(original.to_dict()) == original


def test_pending_alerts_survive(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"

    async def first_run() -> None:
        outbox = Outbox(path)
        outbox.start()
        outbox.add("slack", alert("web"))
        delivered = outbox.add("email", alert("db"))
        outbox.done([delivered])
        await outbox.stop()

    asyncio.run(first_run())
    [(entry_id, channel, kept)] = Outbox(path).load()
    assert channel == "slack"
    assert kept == alert("web")

    again = Outbox(path)
    again.load()
    assert again.add("slack", alert("api")) > entry_id


@pytest.mark.parametrize(
    "content",
    [
        "{broken",
        "null",
        "[1, 2]",
        '{"version": 1, "entries": [{"id": Infinity, "channel": "slack"}]}',
        '{"version": 1, "entries": [{"id": 1, "channel": "slack", "alert": {}}]}',
    ],
)
def test_unreadable_outbox_is_moved_aside(tmp_path: Path, content: str) -> None:
    path = tmp_path / "outbox.json"
    path.write_text(content)
    assert Outbox(path).load() == []
    [aside] = [
        p for p in tmp_path.iterdir() if p.name.startswith("outbox.json.corrupt-")
    ]
    assert aside.read_text() == content
    assert not path.exists()


def test_outbox_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "outbox.json").mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        Outbox(tmp_path / "outbox.json").load()


def test_outbox_without_path_keeps_nothing(tmp_path: Path) -> None:
    outbox = Outbox(None)
    outbox.add("slack", alert("web"))
    outbox.save()
    assert list(tmp_path.iterdir()) == []
    assert len(outbox) == 1
