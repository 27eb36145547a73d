"""Persisting monitor state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reactor.errors import ConfigError
from reactor.state import ContainerState, Health
from reactor.store import Snapshot, StateStore, write_atomic


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


@pytest.mark.parametrize(
    "content",
    [
        '{"version": 1, "containers": {}, "observed_from_nano": Infinity}',
        '{"version": 1, "containers": {}, "last_event_nano": 1e400}',
        '{"version": 1, "containers": [], "recent_keys": "x"}',
        "[1]",
    ],
)
def test_malformed_values_are_kept_aside(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    assert StateStore(path).load().containers == {}
    assert any(p.name.startswith("state.json.corrupt-") for p in tmp_path.iterdir())


def test_state_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        StateStore(tmp_path / "state.json").load()


def test_planted_temporary_name_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep me")
    target = tmp_path / "data"
    target.mkdir()
    (target / f".state.json.{os.getpid()}.tmp").symlink_to(outside)
    write_atomic(target / "state.json", b"{}", mode=0o600)
    assert outside.read_text() == "keep me"
    assert (target / "state.json").read_bytes() == b"{}"
    assert (target / "state.json").stat().st_mode & 0o777 == 0o600
