"""Rules of the container state machine, without Docker."""

from __future__ import annotations

from reactor.events import ContainerEvent
from reactor.state import (
    AlertKind,
    ContainerState,
    Health,
    Observation,
    RestartLoopPolicy,
    StateMachine,
)

T0 = 1_800_000_000.0


def event(
    action: str, name: str = "web", at: float = T0, **attributes: str
) -> ContainerEvent:
    base, _, detail = action.partition(":")
    return ContainerEvent(
        action=base.strip(),
        detail=detail.strip(),
        container_id="c0ffee",
        name=name,
        image="nginx:1.27",
        time_nano=int(at * 1e9),
        attributes={"name": name, "image": "nginx:1.27", **attributes},
    )


def machine(**policy: float) -> StateMachine:
    return StateMachine(RestartLoopPolicy(**policy))  # type: ignore[arg-type]


def test_first_sight_running_is_silent() -> None:
    states = machine()
    [transition] = states.observe_event(event("start"))
    assert transition.previous is None
    assert transition.current == Health.UP
    assert transition.alert is None


def test_first_sight_down_alerts() -> None:
    states = machine()
    [transition] = states.observe(
        Observation(
            name="db", health=Health.DOWN, reason="exited", time=T0, exit_code=1
        )
    )
    assert transition.alert == AlertKind.DOWN
    assert transition.exit_code == 1


def test_die_then_start() -> None:
    states = machine()
    states.observe_event(event("start"))
    [down] = states.observe_event(event("die", at=T0 + 1, exitCode="137"))
    assert down.current == Health.DOWN
    assert down.alert == AlertKind.DOWN
    assert down.exit_code == 137
    assert down.reason == "exited"
    [up] = states.observe_event(event("start", at=T0 + 2))
    assert up.previous == Health.DOWN
    assert up.alert == AlertKind.RECOVERED


def test_repeated_die_is_one_transition() -> None:
    states = machine()
    states.observe_event(event("start"))
    assert len(states.observe_event(event("die", at=T0 + 1, exitCode="1"))) == 1
    assert states.observe_event(event("die", at=T0 + 2, exitCode="1")) == []


def test_kill_and_stop_change_nothing() -> None:
    states = machine()
    states.observe_event(event("start"))
    assert states.observe_event(event("kill", at=T0 + 1, signal="9")) == []
    assert states.observe_event(event("stop", at=T0 + 1)) == []
    assert states.states["web"].health == Health.UP


def test_oom_marks_the_following_die() -> None:
    states = machine()
    states.observe_event(event("start"))
    assert states.observe_event(event("oom", at=T0 + 1)) == []
    [down] = states.observe_event(event("die", at=T0 + 1, exitCode="137"))
    assert down.reason == "oom"
    states.observe_event(event("start", at=T0 + 2))
    [again] = states.observe_event(event("die", at=T0 + 3, exitCode="1"))
    assert again.reason == "exited"


def test_unhealthy_then_healthy() -> None:
    states = machine()
    states.observe_event(event("start"))
    [degraded] = states.observe_event(event("health_status: unhealthy", at=T0 + 1))
    assert degraded.current == Health.DEGRADED
    assert degraded.alert == AlertKind.DEGRADED
    [healthy] = states.observe_event(event("health_status: healthy", at=T0 + 2))
    assert healthy.alert == AlertKind.RECOVERED
    assert states.observe_event(event("health_status: healthy", at=T0 + 3)) == []


def test_degraded_container_dies() -> None:
    states = machine()
    states.observe_event(event("start"))
    states.observe_event(event("health_status: unhealthy", at=T0 + 1))
    [down] = states.observe_event(event("die", at=T0 + 2, exitCode="2"))
    assert down.previous == Health.DEGRADED
    assert down.alert == AlertKind.DOWN


def test_destroy_keeps_a_removed_record() -> None:
    states = machine()
    states.observe_event(event("start"))
    states.observe_event(event("die", at=T0 + 1, exitCode="0"))
    [removed] = states.observe_event(event("destroy", at=T0 + 2))
    assert removed.removed is True
    assert removed.alert is None
    assert states.states["web"].removed is True
    assert states.observe_event(event("destroy", at=T0 + 3)) == []


def test_recreated_container_recovers() -> None:
    states = machine()
    states.observe_event(event("start"))
    states.observe_event(event("die", at=T0 + 1, exitCode="137"))
    states.observe_event(event("destroy", at=T0 + 2))
    [recovered] = states.observe_event(event("start", at=T0 + 3))
    assert recovered.alert == AlertKind.RECOVERED
    assert recovered.previous == Health.DOWN
    assert states.states["web"].removed is False


def test_removed_records_expire() -> None:
    states = machine()
    states.observe_event(event("start"))
    states.observe_event(event("destroy", at=T0 + 1))
    assert states.forget_removed(T0 + 1) == []
    assert states.forget_removed(T0 + 2) == ["web"]
    [first] = states.observe_event(event("start", at=T0 + 3))
    assert first.alert is None


def test_rename_moves_the_state() -> None:
    states = machine()
    states.observe_event(event("start", name="old"))
    states.observe_event(event("die", name="old", at=T0 + 1, exitCode="1"))
    gone, moved = states.rename("old", "new", keep=True, now=T0 + 2)
    assert gone.name == "old"
    assert gone.removed is True
    assert gone.alert is None
    assert moved.name == "new"
    assert moved.alert is None
    assert moved.current == Health.DOWN
    assert "old" not in states.states
    [recovered] = states.observe_event(event("start", name="new", at=T0 + 3))
    assert recovered.alert == AlertKind.RECOVERED


def test_rename_out_of_selection_forgets() -> None:
    states = machine()
    states.observe_event(event("start", name="old"))
    [gone] = states.rename("old", "elsewhere", keep=False, now=T0 + 1)
    assert gone.removed is True
    assert states.states == {}


def test_destroy_of_running_container_alerts() -> None:
    states = machine()
    states.observe_event(event("start"))
    [removed] = states.observe_event(event("destroy", at=T0 + 1))
    assert removed.alert == AlertKind.DOWN
    assert removed.removed is True


def test_required_container_stays_missing() -> None:
    states = StateMachine(RestartLoopPolicy(), required=["web"])
    states.observe_event(event("start"))
    states.observe_event(event("die", at=T0 + 1, exitCode="0"))
    assert states.observe_event(event("destroy", at=T0 + 2)) == []
    assert states.states["web"].health == Health.DOWN
    assert states.states["web"].reason == "removed"
    assert states.missing("web", T0 + 3) == []
    [missing] = states.missing("api", T0 + 3)
    assert missing.alert == AlertKind.DOWN
    assert missing.reason == "missing"


def cycle(states: StateMachine, at: float) -> list[AlertKind | None]:
    kinds = [t.alert for t in states.observe_event(event("die", at=at, exitCode="1"))]
    kinds += [t.alert for t in states.observe_event(event("start", at=at + 0.1))]
    return kinds


def test_restart_loop_is_announced_once() -> None:
    states = machine(threshold=3, window=60, stable_after=30)
    states.observe_event(event("start"))
    alerts = []
    for i in range(10):
        alerts += cycle(states, T0 + 1 + i)
    announced = [kind for kind in alerts if kind is not None]
    assert announced == [
        AlertKind.DOWN,
        AlertKind.RECOVERED,
        AlertKind.DOWN,
        AlertKind.RECOVERED,
        AlertKind.RESTART_LOOP,
    ]
    assert states.states["web"].flapping is True
    assert states.states["web"].loop_deaths == 10


def test_restart_loop_ends_when_stable() -> None:
    states = machine(threshold=3, window=60, stable_after=30)
    states.observe_event(event("start"))
    for i in range(4):
        cycle(states, T0 + 1 + i)
    last_change = T0 + 4.1
    assert states.next_stable_check() == last_change + 30
    assert states.check_stable(last_change + 29.9) == []
    [stable] = states.check_stable(last_change + 30)
    assert stable.alert == AlertKind.STABLE
    assert stable.current == Health.UP
    assert stable.restarts == 4
    assert states.states["web"].flapping is False
    assert states.next_stable_check() is None


def test_deaths_outside_window_do_not_loop() -> None:
    states = machine(threshold=3, window=10, stable_after=5)
    states.observe_event(event("start"))
    alerts = []
    for i in range(5):
        alerts += cycle(states, T0 + 1 + i * 20)
    assert AlertKind.RESTART_LOOP not in alerts
    assert alerts.count(AlertKind.DOWN) == 5


def test_state_round_trips_through_dict() -> None:
    state = ContainerState(
        name="web",
        health=Health.DOWN,
        reason="oom",
        since=T0,
        image="nginx",
        container_id="abc",
        exit_code=137,
        deaths=[T0 - 1, T0],
        flapping=True,
        loop_deaths=4,
        removed=True,
    )
    restored = ContainerState.from_dict("web", state.to_dict())
    assert restored == state
