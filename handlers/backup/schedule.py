"""The cron trigger of the backup schedule and the fire times derived from it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.triggers.cron import CronTrigger

MAX_FIRE_TIMES = 100_000
"""Upper bound on fire times examined; a minutely schedule covers about 69 days."""

_LOOKBACK = (timedelta(days=2), timedelta(days=32), timedelta(days=367))

# crontab(5) day-of-week names, indexed by cron's number (Sunday = 0).
_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# APScheduler 3 numbers and names weekdays from Monday = 0.
_APSCHEDULER_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CRON_WEEKDAY_MAX = 7
_WEEKDAY_ITEM = re.compile(
    r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?$"
)


def _cron_weekday_number(token: str) -> int:
    if token.isdigit():
        number = int(token)
        if number > _CRON_WEEKDAY_MAX:
            raise ValueError(
                f"day of week {token!r} is out of range; use 0-7 (0 and 7 are Sunday)"
            )
        return number
    if token in _CRON_WEEKDAYS:
        return _CRON_WEEKDAYS.index(token)
    raise ValueError(f"day of week {token!r} is not a number 0-7 or a name sun-sat")


def _cron_weekdays(item: str) -> set[int]:
    """Expand one comma-separated item of a cron day-of-week field to Sunday=0 days."""
    match = _WEEKDAY_ITEM.match(item)
    if match is None:
        raise ValueError(f"day of week {item!r} is invalid")
    span, step_text = match["range"], match["step"]
    if span == "*":
        first, last = 0, _CRON_WEEKDAY_MAX
    elif "-" in span:
        start, end = span.split("-")
        first, last = _cron_weekday_number(start), _cron_weekday_number(end)
        if first > last:
            raise ValueError(
                f"day of week range {span!r} ends before it starts; "
                "write it as two ranges, e.g. 5-6,0-1"
            )
    else:
        first = _cron_weekday_number(span)
        # "N/step" runs from N to the end of the week (7, Sunday).
        last = first if step_text is None else _CRON_WEEKDAY_MAX
    step = 1 if step_text is None else int(step_text)
    if step < 1:
        raise ValueError(f"day of week step in {item!r} must be at least 1")
    return {day % 7 for day in range(first, last + 1, step)}


def cron_day_of_week(field: str) -> str:
    """Translate a cron day-of-week field to APScheduler 3's numbering.

    crontab(5) counts weekdays from Sunday = 0, and accepts 7 for Sunday too.
    APScheduler 3 counts from Monday = 0, so ``0 2 * * 1-5`` passed through
    unchanged would run Tuesday to Saturday. The field is expanded to a set of
    days and returned as a list of APScheduler weekday names. Numbers,
    names, ranges, lists and steps are accepted, and ``*`` stays as it is.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.lower().split(","):
        days |= _cron_weekdays(item)
    # Monday first, so the result reads in APScheduler's order.
    ordered = sorted(days, key=lambda day: (day - 1) % 7)
    return ",".join(_APSCHEDULER_WEEKDAYS[(day - 1) % 7] for day in ordered)


class LocalCronTrigger(CronTrigger):  # type: ignore[misc]
    """A cron trigger that fires once per local wall-clock time.

    When clocks go back, APScheduler 3.11 fires a daily ``0 2 * * *`` job at
    02:00 summer time and again at 02:00 winter time. Like Vixie cron, this
    trigger skips the second occurrence of a repeated local time, so a daily
    backup runs once per local day.

    :meth:`from_crontab` reads the day of week with cron's numbering.
    """

    # NOTE: when both day of month and day of week are restricted, cron runs
    # on either match, but APScheduler 3 requires both: "0 2 1 * 1" fires
    # only on a 1st that is a Monday.

    @classmethod
    def from_crontab(
        cls, expr: str, timezone: tzinfo | str | None = None
    ) -> LocalCronTrigger:
        """Build a trigger from a five-field crontab expression, Sunday = 0 or 7."""
        values = expr.split()
        if len(values) != 5:
            raise ValueError(f"Wrong number of fields; got {len(values)}, expected 5")
        minute, hour, day, month, day_of_week = values
        return cls(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=cron_day_of_week(day_of_week),
            timezone=timezone,
        )

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
