"""The Docker Engine events stream: parsing and a reader that never waits on handlers.

The daemon skips events for a subscriber that takes more than about 100 ms to
read one (moby ``daemon/events``), so the stream is read on its own thread,
which only decodes and hands events to the asyncio loop. The thread waits
only when ``MAX_IN_FLIGHT`` events are still unhandled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import docker
from docker.types.daemon import CancellableStream

logger = logging.getLogger(__name__)

# Server-side filter: the exec_create/exec_start/exec_die noise of every health
# probe never reaches the process. ``health_status`` matches both
# "health_status: healthy" and "health_status: unhealthy" on Engine 20.10+.
WATCHED_ACTIONS = (
    "start",
    "restart",
    "die",
    "oom",
    "kill",
    "stop",
    "destroy",
    "rename",
    "pause",
    "unpause",
    "health_status",
)
EVENT_FILTERS: dict[str, list[str]] = {
    "type": ["container"],
    "event": list(WATCHED_ACTIONS),
}


class MalformedEventError(ValueError):
    """An event without the fields every container event has."""


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """One container event from the Engine, reduced to what the reactor uses."""

    action: str
    """The action without detail: ``die``, ``health_status``, ``start``..."""
    detail: str
    """Text after the colon in the raw action, such as ``unhealthy``."""
    container_id: str
    name: str
    image: str
    time_nano: int
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int | None:
        value = self.attributes.get("exitCode")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    @property
    def time(self) -> float:
        return self.time_nano / 1e9

    @property
    def key(self) -> tuple[int, str, str]:
        """Identity used to drop an event that a replay delivers twice."""
        return (self.time_nano, self.container_id, self.action + self.detail)


def parse_event(raw: Mapping[str, Any]) -> ContainerEvent | None:
    """Reduce a decoded event to a :class:`ContainerEvent`.

    Returns None for events of other types; raises :class:`MalformedEventError`
    when a container event lacks its action, actor id or name.
    """
    if raw.get("Type", "container") != "container":
        return None
    action_text = raw.get("Action")
    actor = raw.get("Actor")
    if not isinstance(action_text, str) or not isinstance(actor, Mapping):
        raise MalformedEventError(f"event without Action or Actor: {dict(raw)!r:.200}")
    attributes = actor.get("Attributes") or {}
    container_id = actor.get("ID")
    name = attributes.get("name") if isinstance(attributes, Mapping) else None
    if not isinstance(container_id, str) or not isinstance(name, str) or not name:
        raise MalformedEventError(
            f"container event without ID or name: {dict(raw)!r:.200}"
        )

    action, _, detail = action_text.partition(":")
    time_nano = raw.get("timeNano")
    if not isinstance(time_nano, int):
        seconds = raw.get("time")
        time_nano = (
            int(seconds) * 1_000_000_000 if isinstance(seconds, int | float) else 0
        )
    return ContainerEvent(
        action=action.strip(),
        detail=detail.strip(),
        container_id=container_id,
        name=name.lstrip("/"),
        image=str(attributes.get("image", "")),
        time_nano=time_nano,
        attributes={str(k): str(v) for k, v in attributes.items()},
    )


def format_since(time_nano: int) -> str:
    """Format a ``timeNano`` as the ``seconds.nanoseconds`` the Engine accepts."""
    seconds, nanos = divmod(time_nano, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


def event_filters(names: list[str] | None = None) -> dict[str, list[str]]:
    """Return the server-side filters, narrowed to ``names`` when given.

    With exact names the Engine drops other containers' events before they
    reach the process; globs cannot be expressed as an Engine filter.
    """
    filters = dict(EVENT_FILTERS)
    if names:
        filters["container"] = list(names)
    return filters


def open_events(
    api: docker.APIClient,
    *,
    since: str | None,
    until: str | None = None,
    names: list[str] | None = None,
) -> CancellableStream[Any]:
    """Open the filtered events stream as raw chunks; :func:`split_lines` decodes it.

    The Engine takes ``since``/``until`` as ``seconds.nanoseconds`` strings,
    which docker-py passes through unchanged although it annotates them as int.
    docker-py's own decoder is not used: after a line that is not JSON it
    keeps buffering and never yields another event.
    """
    stream: CancellableStream[Any] = api.events(
        since=cast(Any, since),
        until=cast(Any, until),
        filters=event_filters(names),
        decode=False,
    )
    return stream


@dataclass(frozen=True, slots=True)
class UndecodableLine:
    """A line of the events stream that is not a JSON object."""

    text: str


MAX_IN_FLIGHT = 4_096
"""Most events read but not yet handled. The reader waits beyond it: about
1.7 KiB each with compose labels, so some 7 MiB at most. The reactor handles
over 30,000 events a second on one core here, so a real engine rarely gets
near it, and a daemon that then drops events for this slow subscriber is
caught by the next reconciliation."""

MAX_LINE_BYTES = 1 << 20
"""Maximum bytes of a line awaiting its newline; longer lines are dropped."""


def _decode_line(line: bytes) -> dict[str, Any] | UndecodableLine | None:
    line = line.strip()
    if not line:
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return UndecodableLine(line[:200].decode(errors="replace"))
    if not isinstance(value, dict):
        return UndecodableLine(line[:200].decode(errors="replace"))
    return value


def split_lines(
    chunks: Iterable[bytes | str],
) -> Iterator[dict[str, Any] | UndecodableLine]:
    """Split the Engine's newline-delimited JSON into objects, whatever the chunking."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk.encode() if isinstance(chunk, str) else chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            decoded = _decode_line(line)
            if decoded is not None:
                yield decoded
        if len(buffer) > MAX_LINE_BYTES:
            yield UndecodableLine(f"line longer than {MAX_LINE_BYTES} bytes dropped")
            buffer = b""
    decoded = _decode_line(buffer)
    if decoded is not None:
        yield decoded


class RecentEvents:
    """Keys of the events applied most recently, to drop those a replay repeats.

    The daemon may deliver an event a fraction of a millisecond older than
    one it delivered before, and its clock may step back. So "older than the
    newest seen" cannot tell a repeat from a new event, but the key can.
    """

    def __init__(self, capacity: int = 8192) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[tuple[int, str, str], None] = OrderedDict()

    def __contains__(self, key: tuple[int, str, str]) -> bool:
        return key in self._keys

    def add(self, key: tuple[int, str, str]) -> None:
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)

    def since(self, time_nano: int) -> list[tuple[int, str, str]]:
        """Return the keys of events at or after ``time_nano``, oldest first."""
        return [key for key in self._keys if key[0] >= time_nano]


class _Stream(Protocol):
    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """Queued when the stream closes; ``error`` is None for a clean end."""

    error: BaseException | None


class EventReader:
    """Read one opened events stream on a daemon thread into an asyncio queue.

    Each queue item is a list of decoded events, :class:`UndecodableLine`
    items and, last, a :class:`StreamEnded`, in the order they were read.
    """

    def __init__(
        self,
        stream: _Stream,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
    ) -> None:
        self._stream = stream
        self._loop = loop
        self._queue = queue
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._in_flight = 0
        self._pending: list[object] = []
        self._flush_scheduled = False
        self._thread = threading.Thread(
            target=self._run, name="docker-events", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop reading; safe to call from the loop while the thread blocks."""
        self._closing.set()
        with self._lock:
            self._room.notify_all()
        try:
            self._stream.close()
        except Exception:
            logger.debug("Closing the events stream failed", exc_info=True)

    def _hand_over(self, item: object) -> None:
        # Items wait in a list that the loop takes whole. While the loop is
        # busy, a burst costs one wake-up instead of one per event.
        with self._lock:
            while self._in_flight >= MAX_IN_FLIGHT and not self._closing.is_set():
                # Memory stays bounded when the stream outruns the reactor.
                self._room.wait(timeout=0.5)
            self._in_flight += 1
            self._pending.append(item)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:
            # The loop is closed: the worker is exiting.
            self._closing.set()

    def processed(self, count: int) -> None:
        """Record that the loop has handled ``count`` items; call from the loop."""
        with self._lock:
            self._in_flight = max(self._in_flight - count, 0)
            self._room.notify_all()

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._flush_scheduled = False
        self._queue.put_nowait(batch)

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            for item in split_lines(self._stream):
                if self._closing.is_set():
                    return
                self._hand_over(item)
        except Exception as exc:  # noqa: BLE001 - any failure ends this stream
            error = exc
        if not self._closing.is_set():
            self._hand_over(StreamEnded(error))
