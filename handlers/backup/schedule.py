"""The cron trigger of the backup schedule and the fire times derived from it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

MAX_FIRE_TIMES = 100_000
"""Upper bound on fire times examined; a minutely schedule covers about 69 days."""

_LOOKBACK = (timedelta(days=2), timedelta(days=32), timedelta(days=367))


class LocalCronTrigger(CronTrigger):  # type: ignore[misc]
    """A cron trigger that fires once per local wall-clock time.

    When clocks go back, APScheduler 3.11 fires a daily ``0 2 * * *`` job at
    02:00 summer time and again at 02:00 winter time. Like Vixie cron, this
    trigger skips the second occurrence of a repeated local time, so a daily
    backup runs once per local day.
    """

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        fire_time: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        while (
            fire_time is not None
            and previous_fire_time is not None
            and _wall_clock(fire_time) == _wall_clock(previous_fire_time)
        ):
            fire_time = super().get_next_fire_time(fire_time, just_after(fire_time))
        return fire_time


def _wall_clock(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def just_after(moment: datetime) -> datetime:
    """Return the instant one microsecond after ``moment``.

    The sum is taken in UTC: Python adds to an aware time by wall clock, and
    in the repeated hour after clocks go back that lands on the first
    occurrence again, so APScheduler 3.11 would return the same fire time.
    """
    return moment.astimezone(UTC) + timedelta(microseconds=1)


def fire_times(
    trigger: CronTrigger, after: datetime, until: datetime
) -> list[datetime]:
    """Return the fire times strictly after ``after`` and at or before ``until``."""
    found: list[datetime] = []
    previous: datetime | None = None
    moment = just_after(after)
    while len(found) < MAX_FIRE_TIMES:
        fire_time: datetime | None = trigger.get_next_fire_time(previous, moment)
        if fire_time is None or fire_time > until:
            break
        found.append(fire_time)
        previous = fire_time
        moment = just_after(fire_time)
    return found


def previous_fire_time(trigger: CronTrigger, now: datetime) -> datetime | None:
    """Return the last fire time at or before ``now``, looking back up to a year."""
    for window in _LOOKBACK:
        times = fire_times(trigger, now - window, now)
        if times:
            return times[-1]
    return None


@dataclass(frozen=True, slots=True)
class Missed:
    """Scheduled runs that passed while the worker was not running."""

    count: int
    latest: datetime
    """The most recent missed fire time."""
    catch_up: bool
    """True when ``latest`` is within the misfire grace, so it runs now."""


def find_missed(
    trigger: CronTrigger,
    last_fire: datetime | None,
    now: datetime,
    grace: timedelta,
) -> Missed | None:
    """Find the fire times passed since ``last_fire``; None when none passed.

    Without a recorded fire time (a first start) nothing counts as missed.
    """
    if last_fire is None:
        return None
    times = fire_times(trigger, last_fire, now)
    if not times:
        return None
    latest = times[-1]
    return Missed(count=len(times), latest=latest, catch_up=now - latest <= grace)
