"""Turn container transitions into alerts for people."""

from __future__ import annotations

from datetime import UTC, datetime

from reactor.alerts import Alert, AlertType
from reactor.state import AlertKind, Health, RestartLoopPolicy, Transition

WORKER = "health-monitor"

_REASONS = {
    "exited": "exited",
    "oom": "was killed by the kernel's out-of-memory killer",
    "removed": "was removed",
    "missing": "does not exist",
    "restarting": "is restarting",
    "created": "was created but never started",
    "paused": "is paused",
    "unhealthy": "failed its health check",
}


def _describe_down(transition: Transition) -> str:
    text = _REASONS.get(transition.reason, transition.reason)
    if transition.exit_code is not None and transition.reason in {"exited", "oom"}:
        text += f" with exit code {transition.exit_code}"
        if transition.exit_code == 137 and transition.reason == "exited":
            text += " (SIGKILL)"
    return text


def build_alert(
    transition: Transition, host: str, policy: RestartLoopPolicy
) -> Alert | None:
    """Return the alert a transition deserves, or None when it is silent."""
    kind = transition.alert
    if kind is None:
        return None
    name = transition.name
    when = (
        datetime.fromtimestamp(transition.time, UTC)
        if transition.time
        else datetime.now(UTC)
    )

    fields: list[tuple[str, str]] = [("Container", name)]
    if transition.image:
        fields.append(("Image", transition.image))
    fields.append(("Host", host))
    fields.append(
        ("Time", when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    )
    if transition.exit_code is not None and transition.current == Health.DOWN:
        fields.append(("Exit code", str(transition.exit_code)))
    if transition.reason:
        fields.append(("Reason", transition.reason))

    if kind == AlertKind.DOWN:
        alert_type = AlertType.ERROR
        title = f"Container {name} is down"
        text = f"{name} {_describe_down(transition)}."
    elif kind == AlertKind.DEGRADED:
        alert_type = AlertType.WARNING
        state = "paused" if transition.reason == "paused" else "unhealthy"
        title = f"Container {name} is {state}"
        text = f"{name} {_REASONS.get(transition.reason, transition.reason)}."
        if transition.reason == "unhealthy":
            fields.append(
                ("Health check output", transition.probe_output or "(no output)")
            )
    elif kind == AlertKind.RECOVERED:
        alert_type = AlertType.INFO
        title = f"Container {name} recovered"
        was = transition.previous.value if transition.previous else "unknown"
        text = f"{name} is {transition.reason} again (was {was})."
    elif kind == AlertKind.RESTART_LOOP:
        alert_type = AlertType.ERROR
        title = f"Container {name} is restarting repeatedly"
        text = (
            f"{name} died {transition.restarts} times within {policy.window:g} s. "
            "Further restarts are not announced one by one; one message follows "
            f"once it has had no death for {policy.stable_after:g} s."
        )
        fields.append(("Restarts", str(transition.restarts)))
    else:
        fields.append(("Restarts", str(transition.restarts)))
        if transition.current == Health.UP:
            alert_type = AlertType.INFO
            title = f"Container {name} is stable again"
            text = (
                f"{name} has been running for {policy.stable_after:g} s after "
                f"{transition.restarts} deaths in a restart loop."
            )
        else:
            alert_type = AlertType.ERROR
            title = (
                f"Container {name} stopped restarting and is {transition.current.value}"
            )
            text = (
                f"{name} left its restart loop after {transition.restarts} deaths "
                f"and {_describe_down(transition)}."
            )

    return Alert(
        type=alert_type,
        title=title,
        text=text,
        worker=WORKER,
        host=host,
        subject=name,
        fields=tuple(fields),
        time=when,
        kind=kind.value,
    )
