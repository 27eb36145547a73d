"""Parsing Docker events."""

from __future__ import annotations

from typing import Any

import pytest

from reactor.events import (
    MAX_LINE_BYTES,
    MalformedEventError,
    RecentEvents,
    UndecodableLine,
    event_filters,
    format_since,
    parse_event,
    split_lines,
)


def raw(action: str, **attributes: str) -> dict[str, Any]:
    return {
        "Type": "container",
        "Action": action,
        "Actor": {
            "ID": "abc123",
            "Attributes": {"name": "web", "image": "nginx", **attributes},
        },
        "scope": "local",
        "time": 1_800_000_000,
        "timeNano": 1_800_000_000_123_456_789,
    }


def test_die_event_fields() -> None:
    parsed = parse_event(raw("die", exitCode="137"))
    assert parsed is not None
    assert parsed.action == "die"
    assert parsed.detail == ""
    assert parsed.name == "web"
    assert parsed.image == "nginx"
    assert parsed.exit_code == 137
    assert parsed.time_nano == 1_800_000_000_123_456_789


def test_health_status_detail() -> None:
    parsed = parse_event(raw("health_status: unhealthy"))
    assert parsed is not None
    assert parsed.action == "health_status"
    assert parsed.detail == "unhealthy"


def test_other_types_are_ignored() -> None:
    assert parse_event({**raw("create"), "Type": "network"}) is None


def test_time_falls_back_to_seconds() -> None:
    event = raw("start")
    del event["timeNano"]
    parsed = parse_event(event)
    assert parsed is not None
    assert parsed.time_nano == 1_800_000_000_000_000_000


def test_bad_exit_code_is_none() -> None:
    parsed = parse_event(raw("die", exitCode="x"))
    assert parsed is not None
    assert parsed.exit_code is None


@pytest.mark.parametrize(
    "event",
    [
        {"Type": "container"},
        {"Type": "container", "Action": "die", "Actor": "nope"},
        {
            "Type": "container",
            "Action": "die",
            "Actor": {"ID": "abc", "Attributes": {}},
        },
        {
            "Type": "container",
            "Action": "die",
            "Actor": {"Attributes": {"name": "web"}},
        },
        {"Type": "container", "Action": 5, "Actor": {"ID": "abc"}},
    ],
)
def test_malformed_events_raise(event: dict[str, Any]) -> None:
    with pytest.raises(MalformedEventError):
        parse_event(event)


def test_format_since_keeps_nanoseconds() -> None:
    assert format_since(1_800_000_000_000_000_042) == "1800000000.000000042"


def test_split_lines_survives_chunking_and_garbage() -> None:
    chunks: list[bytes | str] = [
        b'{"a": 1}\n{"b"',
        b": 2}\n<html>502</html>\n",
        '{"c": 3}',
    ]
    items = list(split_lines(chunks))
    assert items == [{"a": 1}, {"b": 2}, UndecodableLine("<html>502</html>"), {"c": 3}]


def test_split_lines_rejects_non_objects_and_huge_lines() -> None:
    items = list(
        split_lines([b"[1, 2]\n", b"x" * (MAX_LINE_BYTES + 1), b'\n{"d": 4}\n'])
    )
    assert items[0] == UndecodableLine("[1, 2]")
    assert isinstance(items[1], UndecodableLine)
    assert "dropped" in items[1].text
    assert items[-1] == {"d": 4}


def test_recent_events_is_bounded() -> None:
    recent = RecentEvents(capacity=3)
    for nano in range(5):
        recent.add((nano, "c", "die"))
    assert (0, "c", "die") not in recent
    assert (4, "c", "die") in recent
    assert recent.since(3) == [(3, "c", "die"), (4, "c", "die")]


def test_event_filters_narrow_to_exact_names() -> None:
    assert "container" not in event_filters()
    narrowed = event_filters(["web", "db"])
    assert narrowed["container"] == ["web", "db"]
    assert narrowed["type"] == ["container"]
    assert "exec_create" not in narrowed["event"]
