"""The monitor's handling of the events it reads, without a Docker engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from reactor.config import MonitorSettings, load
from reactor.events import UndecodableLine
from reactor.monitor import HealthMonitor, daemon_time
from reactor.state import Health

T0 = 1_800_000_000_000_000_000


def raw(action: str, name: str, nano: int, **attributes: str) -> dict[str, Any]:
    return {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": f"id-{name}", "Attributes": {"name": name, **attributes}},
        "timeNano": nano,
    }


def monitor(tmp_path: Path) -> HealthMonitor:
    settings = load(MonitorSettings, {"HEALTH_LOG_DIR": str(tmp_path)})
    return HealthMonitor(settings)


def feed(target: HealthMonitor, *items: object) -> None:
    async def run() -> None:
        for item in items:
            await target._handle_raw(item)

    asyncio.run(run())


def test_out_of_order_events_are_all_applied(tmp_path: Path) -> None:
    target = monitor(tmp_path)
    starts = [raw("start", f"c{i}", T0 + i) for i in range(3)]
    # The daemon may deliver an event a little older than one already sent.
    deaths = [
        raw("die", "c2", T0 + 1_000_300, exitCode="137"),
        raw("die", "c0", T0 + 1_000_100, exitCode="137"),
        raw("die", "c1", T0 + 1_000_200, exitCode="137"),
    ]
    feed(target, *starts, *deaths)
    assert {name: s.health for name, s in target.machine.states.items()} == {
        "c0": Health.DOWN,
        "c1": Health.DOWN,
        "c2": Health.DOWN,
    }


def test_replayed_event_is_applied_once(tmp_path: Path) -> None:
    target = monitor(tmp_path)
    start = raw("start", "web", T0)
    death = raw("die", "web", T0 + 10, exitCode="1")
    feed(target, start, death, start, death)
    assert target.stats.events_seen == 2
    assert target.stats.transitions == 2


def test_future_stamped_event_does_not_hide_later_ones(tmp_path: Path) -> None:
    target = monitor(tmp_path)
    future = T0 + 300 * 1_000_000_000
    feed(
        target,
        raw("start", "other", future),
        raw("start", "web", T0),
        raw("die", "web", T0 + 5, exitCode="1"),
    )
    assert target.machine.states["web"].health == Health.DOWN


def test_replay_start_is_clamped_to_daemon_clock(tmp_path: Path) -> None:
    target = monitor(tmp_path)
    target._position = T0 + 600 * 1_000_000_000
    target._observed_from = T0 - 3_600 * 1_000_000_000
    start = target._replay_start(T0 / 1e9)
    assert start == T0 - 2_000_000_000


def test_replay_never_starts_before_observation(tmp_path: Path) -> None:
    target = monitor(tmp_path)
    target._position = T0
    target._observed_from = T0 - 500_000_000
    assert target._replay_start(T0 / 1e9 + 10) == T0 - 500_000_000


def test_non_json_line_is_counted_and_skipped(tmp_path: Path) -> None:
    target = monitor(tmp_path)
    feed(
        target,
        raw("start", "web", T0),
        UndecodableLine("<html>502 Bad Gateway</html>"),
        raw("die", "web", T0 + 5, exitCode="1"),
    )
    assert target.stats.events_malformed == 1
    assert target.machine.states["web"].health == Health.DOWN


def test_daemon_time_parses_nanoseconds() -> None:
    assert (
        daemon_time({"SystemTime": "2027-01-15T08:00:00.123456789Z"})
        == 1800000000.123456
    )
    assert daemon_time({"SystemTime": "2027-01-15T09:00:00+01:00"}) == 1800000000.0
    assert daemon_time({}) is None


def test_rename_event_moves_state(tmp_path: Path) -> None:
    target = monitor(tmp_path)
    feed(
        target,
        raw("start", "old", T0),
        raw("rename", "new", T0 + 5, oldName="/old"),
    )
    assert "old" not in target.machine.states
    assert target.machine.states["new"].health == Health.UP
    assert target.stats.transitions == 3


def test_unselected_saved_states_are_forgotten(tmp_path: Path) -> None:
    first = monitor(tmp_path)
    feed(first, raw("start", "web", T0), raw("start", "db", T0 + 1))
    first._save()
    settings = load(
        MonitorSettings,
        {"HEALTH_LOG_DIR": str(tmp_path), "CONTAINERS_TO_MONITOR": "db"},
    )
    second = HealthMonitor(settings)

    async def run_until_connect() -> None:
        second.request_stop()
        await second.run()

    asyncio.run(run_until_connect())
    assert set(second.machine.states) == {"db"}


def test_failed_state_save_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = monitor(tmp_path)
    real_write = target.store.write
    attempts: list[int] = []

    def flaky_write(data: bytes) -> None:
        attempts.append(len(data))
        if len(attempts) == 1:
            raise OSError(28, "No space left on device")
        real_write(data)

    monkeypatch.setattr(target.store, "write", flaky_write)

    async def run() -> None:
        saver = asyncio.create_task(target._save_loop())
        await target._handle_raw(raw("start", "web", T0))
        target._dirty.set()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(attempts) >= 2:
                break
        saver.cancel()

    asyncio.run(run())
    assert len(attempts) == 2
    assert "web" in target.store.load().containers
    assert target._save_failing is False
