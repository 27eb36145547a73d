"""The state of each monitored container and the transitions between states.

This module is pure: it takes observations (from events or from a container
listing) and returns transitions, so every rule can be tested without Docker.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from reactor.events import ContainerEvent


class Health(enum.StrEnum):
    """The three states an operator cares about."""

    UP = "up"
    """Running, and healthy or without a health check."""
    DEGRADED = "degraded"
    """Running but unhealthy, or paused."""
    DOWN = "down"
    """Exited, killed by OOM, restarting, removed or missing."""


class AlertKind(enum.StrEnum):
    """Reason a transition is announced."""

    DOWN = "down"
    DEGRADED = "degraded"
    RECOVERED = "recovered"
    RESTART_LOOP = "restart_loop"
    STABLE = "stable"


@dataclass(frozen=True, slots=True)
class Observation:
    """A container's state as one event or one listing shows it."""

    name: str
    health: Health
    reason: str
    time: float
    image: str = ""
    container_id: str = ""
    exit_code: int | None = None
    removed: bool = False
    death: bool = False
    """True when the container's process ended (die), as opposed to a listing."""


@dataclass(slots=True)
class ContainerState:
    """The monitor's record of one container, kept between events and restarts."""

    name: str
    health: Health
    reason: str
    since: float
    image: str = ""
    container_id: str = ""
    exit_code: int | None = None
    deaths: list[float] = field(default_factory=list)
    flapping: bool = False
    loop_deaths: int = 0
    oom_pending: bool = False
    removed: bool = False
    """The container is gone; the state is kept so that a container created
    again under the same name is announced as a recovery."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "health": self.health.value,
            "reason": self.reason,
            "since": self.since,
            "image": self.image,
            "container_id": self.container_id,
            "exit_code": self.exit_code,
            "deaths": self.deaths,
            "flapping": self.flapping,
            "loop_deaths": self.loop_deaths,
            "removed": self.removed,
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> ContainerState:
        return cls(
            name=name,
            health=Health(data["health"]),
            reason=str(data.get("reason", "")),
            since=float(data.get("since", 0.0)),
            image=str(data.get("image", "")),
            container_id=str(data.get("container_id", "")),
            exit_code=data.get("exit_code"),
            deaths=[float(t) for t in data.get("deaths", [])],
            flapping=bool(data.get("flapping", False)),
            loop_deaths=int(data.get("loop_deaths", 0)),
            removed=bool(data.get("removed", False)),
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a container's health, or the end of a restart loop."""

    name: str
    previous: Health | None
    current: Health
    reason: str
    time: float
    image: str = ""
    container_id: str = ""
    exit_code: int | None = None
    alert: AlertKind | None = None
    """None when the change is recorded but not announced (first sight, loop)."""
    removed: bool = False
    """True when the container is gone for good and leaves the monitored set."""
    restarts: int = 0
    """Deaths counted in the current restart loop."""
    probe_output: str = ""


@dataclass(frozen=True, slots=True)
class RestartLoopPolicy:
    """How many deaths within a window make a loop, and how long until stable."""

    threshold: int = 3
    window: float = 300.0
    stable_after: float = 120.0


class StateMachine:
    """The states of all monitored containers and the rules that change them."""

    def __init__(
        self,
        policy: RestartLoopPolicy,
        required: list[str] | None = None,
        states: dict[str, ContainerState] | None = None,
    ) -> None:
        self.policy = policy
        self.required = set(required or [])
        """Names that must exist: they stay as ``missing`` instead of leaving."""
        self.states: dict[str, ContainerState] = {}
        # Names in a restart loop, kept apart so that the per-event stable
        # check costs nothing when no container is looping.
        self._looping: set[str] = set()
        self.load(states or {})

    def load(self, states: dict[str, ContainerState]) -> None:
        """Replace every state, e.g. with those saved by a previous run."""
        self.states = dict(states)
        self._looping = {name for name, state in self.states.items() if state.flapping}

    def observe_event(self, event: ContainerEvent) -> list[Transition]:
        """Apply one container event; return the transitions it caused."""
        state = self.states.get(event.name)
        if event.action == "oom":
            # The die that follows carries the exit code; remember why it died.
            if state is not None:
                state.oom_pending = True
            else:
                self.states[event.name] = ContainerState(
                    name=event.name,
                    health=Health.UP,
                    reason="running",
                    since=event.time,
                    image=event.image,
                    container_id=event.container_id,
                    oom_pending=True,
                )
            return []

        observation = _observation_from_event(event, state)
        if observation is None:
            return []
        return self.observe(observation)

    def observe(self, observation: Observation) -> list[Transition]:
        """Apply one observation; return the transitions it caused."""
        state = self.states.get(observation.name)
        if state is None:
            return self._first_sight(observation)

        previous = state.health
        if observation.image:
            state.image = observation.image
        if observation.container_id:
            state.container_id = observation.container_id
        if observation.death:
            state.oom_pending = False

        if observation.removed and observation.name not in self.required:
            if state.removed:
                return []
            alert = self._alert_for(state, previous, Health.DOWN, observation)
            state.removed = True
            state.health = Health.DOWN
            state.reason = observation.reason
            state.since = observation.time
            return [
                self._transition(
                    state, previous, Health.DOWN, observation, alert, removed=True
                )
            ]
        state.removed = False

        if observation.health == previous:
            if observation.health == Health.DOWN and observation.reason != state.reason:
                state.reason = observation.reason
            return []

        alert = self._alert_for(state, previous, observation.health, observation)
        state.health = observation.health
        state.reason = observation.reason
        state.since = observation.time
        if observation.health != Health.UP:
            state.exit_code = observation.exit_code
        return [
            self._transition(state, previous, observation.health, observation, alert)
        ]

    def forget_removed(self, before: float) -> list[str]:
        """Drop removed containers gone since before ``before``; return their names."""
        names = [
            name
            for name, state in self.states.items()
            if state.removed and state.since < before
        ]
        for name in names:
            del self.states[name]
            self._looping.discard(name)
        return names

    def forget(self, names: list[str]) -> None:
        """Drop containers without a transition, e.g. those no longer selected."""
        for name in names:
            self.states.pop(name, None)
            self._looping.discard(name)

    def rename(self, old: str, new: str, keep: bool, now: float) -> list[Transition]:
        """Move a renamed container's state; ``keep`` is whether ``new`` is watched."""
        state = self.states.pop(old, None)
        self._looping.discard(old)
        if state is None:
            return []
        transitions = [
            Transition(
                name=old,
                previous=state.health,
                current=state.health,
                reason="renamed",
                time=now,
                image=state.image,
                container_id=state.container_id,
                removed=True,
            )
        ]
        if keep:
            state.name = new
            self.states[new] = state
            if state.flapping:
                self._looping.add(new)
            transitions.append(
                Transition(
                    name=new,
                    previous=None,
                    current=state.health,
                    reason=state.reason,
                    time=now,
                    image=state.image,
                    container_id=state.container_id,
                )
            )
        return transitions

    def missing(self, name: str, now: float) -> list[Transition]:
        """Record that a required container is absent from a listing."""
        return self.observe(
            Observation(name=name, health=Health.DOWN, reason="missing", time=now)
        )

    def check_stable(self, now: float) -> list[Transition]:
        """End every restart loop whose state has not changed for the stable period.

        A loop ends up or down: a container waiting for Docker's next restart
        is down too, but its back-off (at most a minute in Docker 20.10) is
        shorter than the default stable period, so it does not end the loop.
        """
        transitions = []
        for name in sorted(self._looping):
            state = self.states.get(name)
            if state is None or not state.flapping:
                self._looping.discard(name)
                continue
            if now - _last_change(state) < self.policy.stable_after:
                continue
            self._looping.discard(name)
            state.flapping = False
            restarts = state.loop_deaths
            state.loop_deaths = 0
            state.deaths.clear()
            transitions.append(
                Transition(
                    name=state.name,
                    previous=state.health,
                    current=state.health,
                    reason=state.reason,
                    time=now,
                    image=state.image,
                    container_id=state.container_id,
                    exit_code=state.exit_code,
                    alert=AlertKind.STABLE,
                    restarts=restarts,
                )
            )
        return transitions

    def next_stable_check(self) -> float | None:
        """Return when the earliest restart loop may be declared over, if any."""
        times = [
            _last_change(self.states[name]) + self.policy.stable_after
            for name in self._looping
            if name in self.states
        ]
        return min(times) if times else None

    def _first_sight(self, observation: Observation) -> list[Transition]:
        if observation.removed and observation.name not in self.required:
            # Removed before we ever knew it: nothing to report or to keep.
            return []
        state = ContainerState(
            name=observation.name,
            health=observation.health,
            reason=observation.reason,
            since=observation.time,
            image=observation.image,
            container_id=observation.container_id,
            exit_code=observation.exit_code,
        )
        self.states[observation.name] = state
        # A container found healthy needs no message; one found down or
        # unhealthy is a failure like any other.
        alert = None
        if observation.health == Health.DOWN:
            alert = AlertKind.DOWN
        elif observation.health == Health.DEGRADED:
            alert = AlertKind.DEGRADED
        return [self._transition(state, None, observation.health, observation, alert)]

    def _alert_for(
        self,
        state: ContainerState,
        previous: Health,
        current: Health,
        observation: Observation,
    ) -> AlertKind | None:
        if observation.death:
            state.deaths = [
                t for t in state.deaths if observation.time - t < self.policy.window
            ]
            state.deaths.append(observation.time)
            if state.flapping:
                state.loop_deaths += 1
                return None
            if len(state.deaths) >= self.policy.threshold:
                state.flapping = True
                self._looping.add(state.name)
                state.loop_deaths = len(state.deaths)
                return AlertKind.RESTART_LOOP
        if state.flapping:
            # Inside a loop every cycle is expected; the end of the loop is
            # announced once by check_stable.
            return None
        if current == previous:
            return None
        if current == Health.DOWN:
            return AlertKind.DOWN
        if current == Health.DEGRADED:
            return AlertKind.DEGRADED
        return AlertKind.RECOVERED

    @staticmethod
    def _transition(
        state: ContainerState,
        previous: Health | None,
        current: Health,
        observation: Observation,
        alert: AlertKind | None,
        *,
        removed: bool = False,
    ) -> Transition:
        return Transition(
            name=state.name,
            previous=previous,
            current=current,
            reason=observation.reason,
            time=observation.time,
            image=observation.image or state.image,
            container_id=observation.container_id or state.container_id,
            exit_code=observation.exit_code,
            alert=alert,
            removed=removed,
            restarts=state.loop_deaths,
        )


def _last_change(state: ContainerState) -> float:
    return max(state.since, state.deaths[-1] if state.deaths else 0.0)


def _observation_from_event(
    event: ContainerEvent, state: ContainerState | None
) -> Observation | None:
    def observed(health: Health, reason: str, **details: Any) -> Observation:
        return Observation(
            name=event.name,
            health=health,
            reason=reason,
            time=event.time,
            image=event.image,
            container_id=event.container_id,
            **details,
        )

    match event.action:
        case "start" | "restart" | "unpause":
            return observed(Health.UP, "running")
        case "health_status" if event.detail == "healthy":
            return observed(Health.UP, "healthy")
        case "health_status" if event.detail == "unhealthy":
            return observed(Health.DEGRADED, "unhealthy")
        case "pause":
            return observed(Health.DEGRADED, "paused")
        case "die":
            oom = state is not None and state.oom_pending
            reason = "oom" if oom else "exited"
            return observed(Health.DOWN, reason, exit_code=event.exit_code, death=True)
        case "destroy":
            return observed(Health.DOWN, "removed", removed=True)
        case _:
            # kill and stop precede a die, which carries the facts; a
            # "health_status: starting" changes nothing an operator acts on.
            return None
