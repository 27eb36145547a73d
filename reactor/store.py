"""Durable monitor state in ``state.json``, replaced atomically on each change.

A restarted worker reads it back, so it neither repeats an alert nor forgets a
container that was already down.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from reactor.errors import ConfigError
from reactor.state import ContainerState

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(slots=True)
class Snapshot:
    """Everything persisted between runs."""

    containers: dict[str, ContainerState] = field(default_factory=dict)
    last_event_nano: int = 0
    """Newest ``timeNano`` applied; the replay on reconnect starts near it."""
    observed_from_nano: int = 0
    """Daemon time since when the monitor saw every event."""
    recent_keys: list[tuple[int, str, str]] = field(default_factory=list)
    """Keys of the events just before it, so a replay does not apply them twice."""


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``; readers see the old or the new file, not half.

    The temporary file gets a random name and is created exclusively, so a
    file or symlink planted under a predictable name is never written through.
    """
    descriptor, temporary_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    temporary = Path(temporary_name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


CORRUPT_ERRORS = (ValueError, KeyError, TypeError, AttributeError, ArithmeticError)
"""Exceptions raised by reading a saved JSON file of the wrong shape or values."""


def move_aside(path: Path) -> Path:
    """Rename an unreadable file to ``NAME.corrupt-TIME``, keeping it for a look."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    os.replace(path, aside)
    return aside


class StateStore:
    """Load and save a :class:`Snapshot` as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Snapshot:
        """Read the snapshot; a missing file is an empty one.

        A corrupt file is moved aside (never deleted) and the monitor starts
        from the Engine's listing instead.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Snapshot()
        except OSError as exc:
            raise ConfigError(
                f"state file {str(self.path)!r} cannot be read ({exc.strerror}); "
                "remove it or fix its permissions"
            ) from exc
        try:
            data = json.loads(raw)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            containers = {
                name: ContainerState.from_dict(name, entry)
                for name, entry in data.get("containers", {}).items()
            }
            recent = [
                (int(nano), str(container), str(action))
                for nano, container, action in data.get("recent_keys", [])
            ]
            return Snapshot(
                containers=containers,
                last_event_nano=int(data.get("last_event_nano", 0)),
                observed_from_nano=int(data.get("observed_from_nano", 0)),
                recent_keys=recent,
            )
        except CORRUPT_ERRORS as exc:
            aside = move_aside(self.path)
            logger.error(
                "State file is unreadable; moved it aside, starting from a listing",
                extra={
                    "event": "state_corrupt",
                    "path": str(self.path),
                    "moved_to": str(aside),
                    "error": str(exc),
                },
            )
            return Snapshot()

    def save(self, snapshot: Snapshot) -> None:
        """Write the snapshot atomically."""
        self.write(self.encode(snapshot))

    @staticmethod
    def encode(snapshot: Snapshot) -> bytes:
        """Serialise the snapshot; call it where the states are not being changed."""
        data = {
            "version": STATE_VERSION,
            "last_event_nano": snapshot.last_event_nano,
            "observed_from_nano": snapshot.observed_from_nano,
            "recent_keys": [list(key) for key in snapshot.recent_keys],
            "containers": {
                name: state.to_dict()
                for name, state in sorted(snapshot.containers.items())
            },
        }
        return json.dumps(data, indent=1).encode()

    def write(self, data: bytes) -> None:
        """Replace the state file with encoded data."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, data)
