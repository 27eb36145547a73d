"""Alerts accepted but not yet delivered, kept on disk until they are.

An alert can still be queued when the worker stops, after a Slack outage
longer than the shutdown grace or a SIGKILL. The state that caused it is
already saved, so without the outbox a restarted worker would never send it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reactor.alerts import Alert
from reactor.errors import ConfigError
from reactor.lifecycle import cancel_and_wait
from reactor.store import CORRUPT_ERRORS, move_aside, write_atomic

logger = logging.getLogger(__name__)

OUTBOX_VERSION = 1
SAVE_INTERVAL = 0.05


class Outbox:
    """Undelivered alerts per channel, saved atomically after each change."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[int, tuple[str, Alert]] = {}
        self._next_id = 1
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def load(self) -> list[tuple[int, str, Alert]]:
        """Read the alerts a previous run left undelivered."""
        if self.path is None:
            return []
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(
                f"outbox {str(self.path)!r} cannot be read ({exc.strerror}); "
                "remove it or fix its permissions"
            ) from exc
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            if data.get("version") != OUTBOX_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            entries = [
                (
                    int(entry["id"]),
                    str(entry["channel"]),
                    Alert.from_dict(entry["alert"]),
                )
                for entry in data.get("entries", [])
            ]
        except CORRUPT_ERRORS as exc:
            aside = move_aside(self.path)
            logger.error(
                "Outbox is unreadable; moved it aside",
                extra={
                    "event": "outbox_corrupt",
                    "moved_to": str(aside),
                    "error": str(exc),
                },
            )
            return []
        for entry_id, channel, alert in entries:
            self._entries[entry_id] = (channel, alert)
            self._next_id = max(self._next_id, entry_id + 1)
        return entries

    def add(self, channel: str, alert: Alert) -> int:
        entry_id = self._next_id
        self._next_id += 1
        self._entries[entry_id] = (channel, alert)
        self._dirty.set()
        return entry_id

    def done(self, entry_ids: Iterable[int]) -> None:
        """Forget alerts that were delivered or failed for good.

        NOTE: delivery is at least once. A worker killed after the channel
        accepted an alert but before this change reached the disk (up to
        SAVE_INTERVAL later) sends it again at its next start.
        """
        for entry_id in entry_ids:
            self._entries.pop(entry_id, None)
        self._dirty.set()

    def __len__(self) -> int:
        return len(self._entries)

    def start(self) -> None:
        if self.path is not None:
            self._task = asyncio.create_task(self._save_loop(), name="outbox-saver")

    async def stop(self) -> None:
        """Stop the saver and write the final contents."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        self.save()

    async def _save_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await asyncio.to_thread(self._write, self._encode())
            await asyncio.sleep(SAVE_INTERVAL)

    def save(self) -> None:
        if self.path is not None:
            self._write(self._encode())

    def _encode(self) -> bytes:
        entries: list[dict[str, Any]] = [
            {"id": entry_id, "channel": channel, "alert": alert.to_dict()}
            for entry_id, (channel, alert) in sorted(self._entries.items())
        ]
        return json.dumps({"version": OUTBOX_VERSION, "entries": entries}).encode()

    def _write(self, data: bytes) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data, mode=0o600)
        except OSError as exc:
            logger.error(
                "Saving the outbox failed",
                extra={
                    "event": "outbox_save_failed",
                    "path": str(self.path),
                    "error": str(exc),
                },
            )
