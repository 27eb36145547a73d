"""Rendering alerts as Slack webhook messages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from handlers.slack import (
    MAX_ATTACHMENTS,
    TEXT_LIMIT,
    SlackChannel,
    _retry_after,
    build_payload,
)
from reactor.alerts import Alert, AlertType
from reactor.errors import DeliveryError


def alert(
    kind: AlertType = AlertType.ERROR, subject: str = "web", text: str = "down"
) -> Alert:
    return Alert(
        type=kind,
        title=f"Container {subject} is down",
        text=text,
        worker="health-monitor",
        host="node-1",
        subject=subject,
        fields=(("Container", subject), ("Exit code", "137")),
    )


def test_single_alert() -> None:
    payload = build_payload([alert()])
    assert payload["text"] == "[ERROR] Container web is down on node-1"
    [attachment] = payload["attachments"]
    assert attachment["color"] == "danger"
    assert attachment["title"].endswith("Container web is down")
    assert {"title": "Exit code", "value": "137", "short": True} in attachment["fields"]
    assert attachment["footer"] == "molochain-workers health-monitor"


def test_colours_follow_alert_type() -> None:
    colours = [
        build_payload([alert(kind)])["attachments"][0]["color"]
        for kind in (AlertType.INFO, AlertType.WARNING, AlertType.ERROR)
    ]
    assert colours == ["good", "warning", "danger"]


def test_long_text_is_clipped() -> None:
    payload = build_payload([alert(text="x" * 5000)])
    assert len(payload["attachments"][0]["text"]) == TEXT_LIMIT


def test_batch_is_summarised_not_dropped() -> None:
    alerts = [alert(subject=f"c{i}") for i in range(MAX_ATTACHMENTS + 7)]
    alerts[-1] = alert(AlertType.WARNING, subject="late")
    payload = build_payload(alerts)
    assert payload["text"] == f"{MAX_ATTACHMENTS + 7} alerts on node-1"
    attachments = payload["attachments"]
    assert len(attachments) == MAX_ATTACHMENTS + 1
    summary = attachments[-1]
    assert summary["title"] == "7 more alerts"
    assert "6 error" in summary["text"]
    assert "1 warning" in summary["text"]
    assert "late" in summary["text"]
    assert summary["color"] == "danger"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("-5", 0.0),
        ("nan", 1.0),
        ("inf", 1.0),
        ("soon", 1.0),
        (None, 1.0),
    ],
)
def test_retry_after_is_finite(header: str | None, expected: float) -> None:
    assert _retry_after(header) == expected


def test_retry_after_http_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)
    seconds = _retry_after(format_datetime(later, usegmt=True))
    assert 28 <= seconds <= 30
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_rejection_reason_hides_webhook_path() -> None:
    url = "https://hooks.slack.example/services/T01/B01/XyZsecretToken"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text=f"Cannot POST {request.url.path}")

    channel = SlackChannel(url)
    channel._client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    with pytest.raises(DeliveryError) as caught:
        asyncio.run(channel.deliver([alert()]))
    assert "XyZsecretToken" not in str(caught.value)
    assert "HTTP 404" in str(caught.value)
    assert "Cannot POST ***" in str(caught.value)
