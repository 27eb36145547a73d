"""The health monitor: follow the events stream, keep state, announce transitions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
)

from reactor import signals
from reactor.alerting import build_alert
from reactor.config import MonitorSettings
from reactor.errors import DockerUnavailableError
from reactor.events import (
    ContainerEvent,
    EventReader,
    MalformedEventError,
    RecentEvents,
    StreamEnded,
    UndecodableLine,
    format_since,
    open_events,
    parse_event,
    split_lines,
)
from reactor.state import (
    AlertKind,
    Health,
    Observation,
    RestartLoopPolicy,
    StateMachine,
    Transition,
)
from reactor.store import Snapshot, StateStore

logger = logging.getLogger(__name__)

# Failures that mean "the daemon is not reachable right now": reconnect.
DOCKER_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    ConnectionError,
    OSError,
)

RECONNECT_MAX_WAIT = 30.0
PROBE_OUTPUT_MAX = 500
STATE_SAVE_INTERVAL = 0.05
STATE_RETRY_MAX_WAIT = 30.0
REPLAY_OVERLAP_NANO = 2_000_000_000
"""How far before the newest event a replay starts. The daemon stamps an event
before it takes its publishing lock, so it may deliver an event slightly older
than one it already delivered."""
REMOVED_KEPT_SECONDS = 24 * 3600
"""How long a removed container is remembered, so that one created again under
its name is announced as a recovery instead of a silent first sight."""
SAVED_KEYS_MAX = 1024
"""Most keys of recent events kept in the state file to recognise a replay."""
STABLE_SCAN_INTERVAL = 1.0
"""Seconds between scans for ended restart loops while events keep arriving."""

_STOP = object()


@dataclass(slots=True)
class MonitorStats:
    """Counters the metrics handler publishes so operators can trust the monitor."""

    events_seen: int = 0
    events_malformed: int = 0
    last_event_time: float = 0.0
    reconnects: int = 0
    transitions: int = 0
    connected: bool = False
    extra: dict[str, float] = field(default_factory=dict)


def daemon_time(info: Mapping[str, Any]) -> float | None:
    """Return the daemon's clock from ``GET /info`` as Unix seconds, if present."""
    text = str(info.get("SystemTime") or "")
    match = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    # datetime keeps microseconds only; the daemon sends nanoseconds.
    micros = (fraction or "0")[:6].ljust(6, "0")
    try:
        moment = datetime.fromisoformat(f"{base}.{micros}{zone.replace('Z', '+00:00')}")
    except ValueError:
        return None
    return moment.timestamp()


def classify_listing(entry: Mapping[str, Any]) -> tuple[Health, str]:
    """Map one entry of ``GET /containers/json`` to a health and a reason."""
    state = str(entry.get("State", "")).lower()
    status = str(entry.get("Status", "")).lower()
    if state == "running":
        if "(unhealthy)" in status:
            return Health.DEGRADED, "unhealthy"
        return Health.UP, "healthy" if "(healthy)" in status else "running"
    if state == "paused":
        return Health.DEGRADED, "paused"
    if state == "restarting":
        return Health.DOWN, "restarting"
    if state == "created":
        return Health.DOWN, "created"
    return Health.DOWN, "exited"


def container_name(entry: Mapping[str, Any]) -> str | None:
    """Return the container's own name from a listing entry (links have two slashes)."""
    for name in entry.get("Names") or []:
        if name.count("/") == 1:
            return str(name.lstrip("/"))
    return None


def create_client(settings: MonitorSettings) -> docker.APIClient:
    """Connect to the Engine and negotiate the API version; raises when unreachable."""
    return docker.APIClient(
        base_url=settings.docker_host,
        version="auto",
        timeout=settings.docker_timeout,
    )


class HealthMonitor:
    """Event-driven reactor over the Docker Engine events stream."""

    def __init__(
        self,
        settings: MonitorSettings,
        client_factory: Callable[[MonitorSettings], docker.APIClient] = create_client,
    ) -> None:
        self.settings = settings
        self.policy = RestartLoopPolicy(
            threshold=settings.restart_loop_threshold,
            window=settings.restart_loop_window,
            stable_after=settings.restart_loop_stable,
        )
        self.store = StateStore(settings.health_log_dir / "state.json")
        self.heartbeat_path = settings.health_log_dir / "heartbeat"
        self.machine = StateMachine(self.policy, required=settings.explicit_names)
        self.stats = MonitorStats()
        self.host = settings.instance_name or "unknown"
        self._client_factory = client_factory
        self._api: docker.APIClient | None = None
        self._stream_api: docker.APIClient | None = None
        self._reader: EventReader | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._dirty = asyncio.Event()
        self._position = 0
        """Newest ``timeNano`` applied: the replay after a reconnect starts near it."""
        self._recent = RecentEvents()
        self._observed_from = 0
        self._save_failing = False
        """Daemon time since when every event was seen; earlier ones, though
        inside the replay overlap, are reflected by the listing instead."""
        self._next_reconcile = 0.0

    # -- lifecycle -------------------------------------------------------

    def request_stop(self) -> None:
        """Ask :meth:`run` to return; safe to call from a signal handler."""
        self._stopping.set()
        self._queue.put_nowait(_STOP)

    async def run(self) -> None:
        """Follow the Engine until :meth:`request_stop`, reconnecting as needed."""
        snapshot = self.store.load()
        self.machine.load(snapshot.containers)
        unselected = [n for n in snapshot.containers if not self.settings.selects(n)]
        if unselected:
            # CONTAINERS_TO_MONITOR changed since the state was saved.
            self.machine.forget(unselected)
            logger.info(
                "Forgot containers that are no longer selected",
                extra={"event": "containers_forgotten", "containers": unselected},
            )
        self._position = snapshot.last_event_nano
        self._observed_from = snapshot.observed_from_nano
        for key in snapshot.recent_keys:
            self._recent.add(key)
        saver = asyncio.create_task(self._save_loop(), name="state-saver")
        logger.info(
            "Health monitor started",
            extra={
                "event": "started",
                "containers": self.settings.containers_to_monitor or ["*"],
                "known_containers": len(snapshot.containers),
            },
        )
        try:
            while not self._stopping.is_set():
                if not await self._connect():
                    break
                await self._follow()
        finally:
            self._close_stream()
            saver.cancel()
            self._save()
            logger.info("Events stream closed", extra={"event": "stream_closed"})

    # -- connection ------------------------------------------------------

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        logger.warning(
            "Docker Engine unreachable, retrying",
            extra={
                "event": "docker_retry",
                "attempt": retry_state.attempt_number,
                "retry_in_seconds": round(wait, 2),
                "docker_host": self.settings.docker_host,
                "error": str(error),
            },
        )

    async def _connect(self) -> bool:
        """Connect, replay what was missed, reconcile, and open the live stream.

        Returns False when a stop was requested before the connection held.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DOCKER_ERRORS),
            wait=wait_exponential(multiplier=0.5, min=0.5, max=RECONNECT_MAX_WAIT),
            stop=lambda _state: self._stopping.is_set(),
            sleep=self._sleep_unless_stopped,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if self._stopping.is_set():
                        return False
                    await self._open()
        except DOCKER_ERRORS:
            # Only reached when stopping: the retry loop never gives up otherwise.
            return False
        return not self._stopping.is_set()

    async def _open(self) -> None:
        self._close_stream()
        self._api = await asyncio.to_thread(self._client_factory, self.settings)
        self._stream_api = await asyncio.to_thread(self._client_factory, self.settings)
        info = await asyncio.to_thread(self._api.info)
        if not self.settings.instance_name:
            self.host = str(info.get("Name") or "unknown")

        # Replay what happened while we were away, from the daemon's ring of
        # recent events, before taking a fresh listing. Times are the
        # daemon's: an "until" ahead of its clock would block until then.
        until = daemon_time(info) or time.time()
        if self._position:
            since = self._replay_start(until)
            replayed = await asyncio.to_thread(self._read_finite, since, until)
            logger.info(
                "Replayed missed events",
                extra={
                    "event": "replayed",
                    "count": len(replayed),
                    "since": format_since(since),
                },
            )
            for raw in replayed:
                await self._handle_raw(raw)
        else:
            self._observed_from = int(until * 1e9)

        await self._reconcile()

        # NOTE: events between "until" and the listing arrive after it. One
        # that the listing already reflects is a no-op, but a start and a die
        # that both fall inside that window of a few milliseconds, after a
        # listing that saw the container exited, give a recovery and a down.
        stream = await asyncio.to_thread(
            open_events,
            self._require(self._stream_api),
            since=f"{until:.9f}",
            names=self._exact_names(),
        )
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        if self._stopping.is_set():
            self._queue.put_nowait(_STOP)
        self._reader = EventReader(stream, loop, self._queue)
        self._reader.start()
        self.stats.connected = True
        logger.info(
            "Following the Docker events stream",
            extra={
                "event": "connected",
                "docker_host": self.settings.docker_host,
                "host": self.host,
            },
        )

    def _exact_names(self) -> list[str] | None:
        """Return the selected names when every selector is an exact name."""
        selectors = self.settings.containers_to_monitor
        explicit = self.settings.explicit_names
        return explicit if selectors and len(explicit) == len(selectors) else None

    def _replay_start(self, daemon_now: float) -> int:
        """Return where to replay from: a little before the newest event applied.

        A position ahead of the daemon's clock (saved before its clock stepped
        back) would replay nothing, so it is clamped to the daemon's time.
        """
        position = self._position
        now_nano = int(daemon_now * 1e9)
        if position > now_nano + 1_000_000_000:
            logger.warning(
                "Saved event position is ahead of the daemon's clock; "
                "replaying from the daemon's time",
                extra={
                    "event": "position_clamped",
                    "position": format_since(position),
                    "daemon_time": format_since(now_nano),
                },
            )
            position = now_nano
        return max(position - REPLAY_OVERLAP_NANO, min(self._observed_from, position))

    def _read_finite(self, since_nano: int, until: float) -> list[object]:
        stream = open_events(
            self._require(self._stream_api),
            since=format_since(since_nano),
            until=f"{until:.9f}",
            names=self._exact_names(),
        )
        try:
            return list(split_lines(stream))
        finally:
            stream.close()

    @staticmethod
    def _require(api: docker.APIClient | None) -> docker.APIClient:
        if api is None:
            raise DockerUnavailableError("not connected to the Docker Engine")
        return api

    def _close_stream(self) -> None:
        self.stats.connected = False
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for api in (self._api, self._stream_api):
            if api is not None:
                api.close()
        self._api = self._stream_api = None

    # -- main loop -------------------------------------------------------

    async def _follow(self) -> None:
        """Handle events until the stream ends or a stop is requested."""
        self._next_reconcile = time.monotonic() + self.settings.check_interval
        stable_at: float | None = None
        next_stable_scan = 0.0
        while not self._stopping.is_set():
            item: object = None
            if not self._queue.empty():
                # The fast path in a burst: no timer per event, and the scan
                # for the end of restart loops at most once a second.
                item = self._queue.get_nowait()
                if time.monotonic() >= next_stable_scan:
                    stable_at = self.machine.next_stable_check()
                    next_stable_scan = time.monotonic() + STABLE_SCAN_INTERVAL
            else:
                stable_at = self.machine.next_stable_check()
                timeout = self._next_reconcile - time.monotonic()
                if stable_at is not None:
                    timeout = min(timeout, stable_at - time.time())
                with contextlib.suppress(TimeoutError):
                    item = await asyncio.wait_for(
                        self._queue.get(), timeout=max(timeout, 0.0)
                    )

            if item is _STOP:
                return
            for entry in item if isinstance(item, list) else ():
                if isinstance(entry, StreamEnded):
                    self.stats.reconnects += 1
                    logger.warning(
                        "Docker events stream ended, reconnecting",
                        extra={
                            "event": "stream_ended",
                            "error": str(entry.error) if entry.error else None,
                        },
                    )
                    self._close_stream()
                    return
                await self._handle_raw(entry)
            if isinstance(item, list) and self._reader is not None:
                self._reader.processed(len(item))

            if stable_at is not None and time.time() >= stable_at:
                await self._announce_all(self.machine.check_stable(time.time()))
                stable_at = self.machine.next_stable_check()
            if time.monotonic() >= self._next_reconcile:
                try:
                    await self._reconcile()
                except DOCKER_ERRORS as exc:
                    logger.warning(
                        "Reconciliation failed, reconnecting",
                        extra={"event": "reconcile_failed", "error": str(exc)},
                    )
                    self._close_stream()
                    return
                self._next_reconcile = time.monotonic() + self.settings.check_interval

    async def _handle_raw(self, raw: object) -> None:
        if isinstance(raw, UndecodableLine):
            self._count_malformed(f"not a JSON object: {raw.text!r}")
            return
        if not isinstance(raw, Mapping):
            return
        try:
            event = parse_event(raw)
        except MalformedEventError as exc:
            self._count_malformed(str(exc))
            return
        if event is None or self._is_duplicate(event):
            return
        self.stats.events_seen += 1
        self.stats.last_event_time = event.time
        if event.action == "rename":
            await self._rename(event)
            return
        if not self.settings.selects(event.name):
            return
        await self._announce_all(self.machine.observe_event(event))

    async def _rename(self, event: ContainerEvent) -> None:
        old = event.attributes.get("oldName", "").lstrip("/")
        keep = self.settings.selects(event.name)
        if not old or old == event.name:
            return
        transitions = self.machine.rename(old, event.name, keep, event.time)
        if not transitions and keep:
            # Renamed into the selection: take its state from the Engine.
            self._next_reconcile = time.monotonic()
        for transition in transitions:
            await self._announce(transition)

    def _count_malformed(self, error: str) -> None:
        self.stats.events_malformed += 1
        # Rate-limited: a broken proxy could send thousands of these.
        count = self.stats.events_malformed
        if count in {1, 10, 100} or count % 1000 == 0:
            logger.warning(
                "Ignored a malformed Docker event",
                extra={"event": "event_malformed", "count": count, "error": error},
            )

    def _is_duplicate(self, event: ContainerEvent) -> bool:
        """Drop an event that a replay delivers again; record the others."""
        if event.key in self._recent:
            return True
        self._recent.add(event.key)
        self._position = max(self._position, event.time_nano)
        # No save here: an event that changes no state, such as one of an
        # unmonitored container, is a no-op when replayed after a crash, and
        # every transition saves the newest position anyway.
        return False

    async def _reconcile(self) -> None:
        """Compare state with a fresh listing: the safety net for missed events."""
        api = self._require(self._api)
        now = time.time()
        listing = await asyncio.to_thread(api.containers, all=True)
        seen: set[str] = set()
        transitions: list[Transition] = []
        for entry in listing:
            name = container_name(entry)
            if name is None or not self.settings.selects(name):
                continue
            seen.add(name)
            health, reason = classify_listing(entry)
            known = self.machine.states.get(name)
            if known is not None and known.health == health:
                continue
            observation = await self._observe_listed(
                entry, name, health, reason, now, known is not None
            )
            transitions += self.machine.observe(observation)

        for name in list(self.machine.states):
            if name not in seen and self.settings.selects(name):
                if name in self.machine.required:
                    transitions += self.machine.missing(name, now)
                else:
                    transitions += self.machine.observe(
                        Observation(
                            name=name,
                            health=Health.DOWN,
                            reason="removed",
                            time=now,
                            removed=True,
                        )
                    )
        for name in self.machine.required:
            if name not in seen and name not in self.machine.states:
                transitions += self.machine.missing(name, now)

        await self._announce_all(transitions)
        await self._announce_all(self.machine.check_stable(now))
        self.machine.forget_removed(now - REMOVED_KEPT_SECONDS)
        signals.publish(
            signals.monitor_heartbeat,
            self,
            states=dict(self.machine.states),
            stats=self.stats,
            host=self.host,
        )
        self._touch_heartbeat()

    async def _observe_listed(
        self,
        entry: Mapping[str, Any],
        name: str,
        health: Health,
        reason: str,
        now: float,
        known: bool,
    ) -> Observation:
        """Build an observation for a listed container, inspecting it for details."""
        exit_code: int | None = None
        if health == Health.DOWN and reason == "exited":
            details = await self._inspect(str(entry.get("Id", "")))
            state = details.get("State", {}) if details else {}
            exit_code = state.get("ExitCode")
            if state.get("OOMKilled"):
                reason = "oom"
        return Observation(
            name=name,
            health=health,
            reason=reason,
            time=now,
            image=str(entry.get("Image", "")),
            container_id=str(entry.get("Id", "")),
            exit_code=exit_code,
            # A container we knew that is now found exited died unseen.
            death=known and health == Health.DOWN and reason in {"exited", "oom"},
        )

    async def _inspect(self, container_id: str) -> dict[str, Any] | None:
        if self._api is None or not container_id:
            return None
        try:
            result: dict[str, Any] = await asyncio.to_thread(
                self._api.inspect_container, container_id
            )
            return result
        except docker.errors.NotFound:
            return None
        except DOCKER_ERRORS as exc:
            logger.warning(
                "Inspecting a container failed",
                extra={
                    "event": "inspect_failed",
                    "container_id": container_id[:12],
                    "error": str(exc),
                },
            )
            return None

    async def _probe_output(self, container_id: str) -> str:
        details = await self._inspect(container_id)
        if not details:
            return ""
        log = ((details.get("State") or {}).get("Health") or {}).get("Log") or []
        if not log:
            return ""
        output = str(log[-1].get("Output", "")).strip()
        return output[:PROBE_OUTPUT_MAX]

    # -- announcing ------------------------------------------------------

    async def _announce_all(self, transitions: list[Transition]) -> None:
        for transition in transitions:
            await self._announce(transition)

    async def _announce(self, transition: Transition) -> None:
        if transition.alert == AlertKind.DEGRADED and transition.reason == "unhealthy":
            output = await self._probe_output(transition.container_id)
            if output:
                transition = _with_probe_output(transition, output)

        self.stats.transitions += 1
        self._dirty.set()
        logger.info(
            "Container %s: %s -> %s (%s)",
            transition.name,
            transition.previous.value if transition.previous else "unknown",
            transition.current.value,
            transition.reason,
            extra={
                "event": "transition",
                "container": transition.name,
                "previous": transition.previous.value if transition.previous else None,
                "current": transition.current.value,
                "reason": transition.reason,
                "exit_code": transition.exit_code,
                "alert_kind": transition.alert.value if transition.alert else None,
            },
        )
        signals.publish(
            signals.container_transition, self, transition=transition, host=self.host
        )
        alert = build_alert(transition, self.host, self.policy)
        if alert is not None:
            signals.publish(signals.alert_raised, self, alert=alert)

    # -- persistence -----------------------------------------------------

    async def _save_loop(self) -> None:
        failures = 0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            # Encode on the loop, where the states cannot change underneath,
            # and write in a thread so fsync never stalls the events.
            if await asyncio.to_thread(self._write, self._encode()):
                failures = 0
                await asyncio.sleep(STATE_SAVE_INTERVAL)
                continue
            # A full disk or a lost mount: try again, or a restart would
            # repeat every alert raised since the last good save.
            failures += 1
            self._dirty.set()
            await asyncio.sleep(min(STATE_RETRY_MAX_WAIT, 0.5 * 2 ** min(failures, 6)))

    def _encode(self) -> bytes:
        recent = self._recent.since(self._position - REPLAY_OVERLAP_NANO)
        return self.store.encode(
            Snapshot(
                containers=self.machine.states,
                last_event_nano=self._position,
                observed_from_nano=self._observed_from,
                recent_keys=recent[-SAVED_KEYS_MAX:],
            )
        )

    def _save(self) -> None:
        self._write(self._encode())

    def _write(self, data: bytes) -> bool:
        try:
            self.store.write(data)
        except OSError as exc:
            self._save_failing = True
            logger.error(
                "Saving the state file failed",
                extra={
                    "event": "state_save_failed",
                    "path": str(self.store.path),
                    "error": str(exc),
                },
            )
            return False
        if self._save_failing:
            logger.info(
                "Saving the state file works again",
                extra={"event": "state_save_recovered", "path": str(self.store.path)},
            )
        self._save_failing = False
        return True

    def _touch_heartbeat(self) -> None:
        if self._save_failing:
            # The healthcheck then reports the worker unhealthy: it cannot
            # keep the state that stops a restart from repeating alerts.
            return
        try:
            self.heartbeat_path.write_text(f"{time.time():.3f}\n", encoding="utf-8")
        except OSError as exc:
            logger.error(
                "Writing the heartbeat file failed",
                extra={
                    "event": "heartbeat_failed",
                    "path": str(self.heartbeat_path),
                    "error": str(exc),
                },
            )


def _with_probe_output(transition: Transition, output: str) -> Transition:
    from dataclasses import replace

    return replace(transition, probe_output=output)
