"""Persisting monitor state."""

from __future__ import annotations

from pathlib import Path

from reactor.state import ContainerState, Health
from reactor.store import Snapshot, StateStore


def test_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    state = ContainerState(
        name="web", health=Health.DOWN, reason="exited", since=1.0, exit_code=3
    )
    store.save(Snapshot(containers={"web": state}, last_event_nano=42))
    loaded = store.load()
    assert loaded.last_event_nano == 42
    assert loaded.containers == {"web": state}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_missing_file_is_empty(tmp_path: Path) -> None:
    loaded = StateStore(tmp_path / "state.json").load()
    assert loaded.containers == {}
    assert loaded.last_event_nano == 0


def test_corrupt_file_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    loaded = StateStore(path).load()
    assert loaded.containers == {}
    [aside] = [
        p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")
    ]
    assert aside.read_text() == "{not json"
    assert not path.exists()


def test_unknown_version_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 99, "containers": {}}')
    assert StateStore(path).load().containers == {}
    assert any(p.name.startswith("state.json.corrupt-") for p in tmp_path.iterdir())
