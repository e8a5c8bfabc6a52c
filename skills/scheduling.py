"""When schedules fire: time zones, cron expressions, ``at:`` times, stagger. Pure: no I/O.

Cron expressions are the classic five fields (minute hour day-of-month month
day-of-week) read the way crontab reads them, and turned into an APScheduler 3
:class:`~apscheduler.triggers.cron.CronTrigger`. Two places where APScheduler 3
differs from crontab are handled here rather than left to surprise a member:

* **Day of week.** ``CronTrigger.from_crontab`` passes the field through, and
  APScheduler 3 numbers days from Monday = 0 (its own docstring warns; issue 286),
  so ``1-5`` would mean Tuesday to Saturday. We read the field as crontab does
  (0 and 7 are Sunday, names allowed) and hand APScheduler the day names.
* **Day of month and day of week both set.** crontab runs when *either* matches;
  APScheduler only when *both* do. Rather than run on other days than the member
  meant, such an expression is refused with the reason.

Every datetime returned is timezone-aware UTC. Across a DST change a schedule behaves
as crontab's (Vixie cron, cronie) does, which is not APScheduler 3's choice:

* **A wall-clock time** (minute and hour both given, no ``*`` in either: ``30 2 * * *``,
  ``0 9,17 * * 1-5``) runs once a day at that time. On the autumn day that repeats
  02:00-03:00 it runs at the first 02:30 only (APScheduler would run it twice, two
  slots and two charges). On the spring day that skips 02:00-03:00, a 02:30 that does
  not exist runs once, when the clocks land (03:00 local), and several times that all
  fall in the gap are one slot (APScheduler would run it at 03:30).
* **An expression with ``*`` in the minute or hour** (``*/15 * * * *``, ``0 * * * *``,
  ``*/20 2 * * *``) follows the clock as it is: the repeated hour runs again, the
  skipped hour has no slots and nothing is made up for it.

:class:`CronSlots` is the trigger that does this; :func:`parse_cron` returns one.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from skills.errors import InvalidCron, InvalidTime, TooFrequent, UnknownTimezone

__all__ = [
    "MAX_STAGGER_S",
    "CronSlots",
    "check_interval",
    "fires_between",
    "is_top_of_hour",
    "last_fires",
    "min_gap_s",
    "parse_at",
    "parse_cron",
    "runs_per_week",
    "stagger_s",
    "zone",
]

MAX_STAGGER_S = 300
MAX_AHEAD = timedelta(days=3660)  # an at: further out than ten years is a typo

# (label, APScheduler field name, allowed values as said to a person)
_FIELDS = (
    ("minute", "minute", "0-59"),
    ("hour", "hour", "0-23"),
    ("day-of-month", "day", "1-31"),
    ("month", "month", "1-12 or jan-dec"),
    ("day-of-week", "day_of_week", "0-7 (0 and 7 are Sunday) or sun-sat"),
)
_TOKEN = re.compile(r"^[0-9a-z*/,-]+$")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab order: 0 = Sunday
_APS_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler 3 order
_EXAMPLES = "e.g. `2026-12-24T09:00`, `2026-12-24 09:00+01:00`, `in 10m`, `in 2h`, `in 1d`"
_UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_RELATIVE = re.compile(r"^in\s+((?:\d+\s*[a-z]+\s*)+)$")
_RELATIVE_PART = re.compile(r"(\d+)\s*([a-z]+)")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone called ``name`` (``UTC`` in any case), or :class:`UnknownTimezone`."""
    clean = name.strip()
    if clean.upper() in ("UTC", "Z", "GMT", "ETC/UTC"):
        return ZoneInfo("UTC")
    if not clean or len(clean) > 64 or clean.startswith(("/", ".")) or ".." in clean:
        raise UnknownTimezone(name)
    try:
        return ZoneInfo(clean)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise UnknownTimezone(name) from exc


def _expand_day_of_week(value: str, expression: str) -> str:
    """A crontab day-of-week field as APScheduler 3 day names (``1-5`` -> ``mon,...,fri``)."""
    problem = (
        f"the day-of-week field `{value}` is not valid: it takes 0-7 (0 and 7 are Sunday) "
        "or sun-sat, as a list, range or step like `1-5` or `mon,wed`"
    )

    def day(token: str) -> int:
        if token.isdigit():
            number = int(token)
            if number > 7:
                raise InvalidCron(expression, problem)
            return number % 7
        if token in _DAY_NAMES:
            return _DAY_NAMES.index(token)
        raise InvalidCron(expression, problem)

    days: set[int] = set()
    for item in value.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise InvalidCron(expression, problem)
            step = int(step_text)
        if base == "*":
            low, high = 0, 6
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = day(first), day(last)
            if last == "7":  # `5-7` is Friday to Sunday
                high = 7
            if low > high:
                raise InvalidCron(expression, problem)
        else:
            low = high = day(base)
            if slash:  # `1/2` means from 1 to the end, every 2
                high = 6
        days.update(d % 7 for d in range(low, high + 1, step))
    if len(days) == 7:
        return "*"
    # APScheduler 3: Monday = 0 ... Sunday = 6.
    return ",".join(_APS_DAYS[d] for d in sorted((d - 1) % 7 for d in days))


_MICROSECOND = timedelta(microseconds=1)


def _as_utc(moment: datetime | None) -> datetime | None:
    # Why through UTC: APScheduler may return a wall time the spring change skips,
    # in the zone, unnormalised (02:00 "CET"); astimezone(UTC) reads it as an instant.
    return moment.astimezone(UTC) if moment is not None else None


class CronSlots(BaseTrigger):  # type: ignore[misc]  # apscheduler ships no types
    """A five-field cron expression's fire times in a zone, across DST as crontab.

    Built by :func:`parse_cron` over APScheduler ``CronTrigger`` s: one in the zone
    for an expression that follows the clock, and one in UTC that, fed a local wall
    time as if it were UTC, finds the wall times the expression names (UTC has no DST,
    so nothing is shifted there).
    """

    def __init__(self, expression: str, fields: dict[str, str], tz: ZoneInfo) -> None:
        self.expression = expression
        self.timezone = tz
        #: Minute and hour both given (crontab's test: neither field starts with ``*``).
        self.fixed = not (fields["minute"].startswith("*") or fields["hour"].startswith("*"))
        # Why each only when needed: building a CronTrigger is most of what start-up
        # costs per schedule, and a clock-following expression needs the wall-time one
        # only next to a change of offset.
        self._fields = fields
        self._zoned = None if self.fixed else CronTrigger(**fields, timezone=tz)
        self._wall_trigger = CronTrigger(**fields, timezone=UTC) if self.fixed else None

    @property
    def _wall(self) -> CronTrigger:
        if self._wall_trigger is None:
            self._wall_trigger = CronTrigger(**self._fields, timezone=UTC)
        return self._wall_trigger

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The first fire at or after ``now`` or, given the previous fire, at or after
        the earlier of ``now`` and just after it, never the previous fire again
        (APScheduler's contract), in UTC."""
        start = now.astimezone(UTC)
        if previous_fire_time is not None:
            previous = previous_fire_time.astimezone(UTC)
            start = min(start, previous + _MICROSECOND)
            if start == previous:
                start += _MICROSECOND
        if start.microsecond:  # cron fires on whole seconds
            start = start.replace(microsecond=0) + timedelta(seconds=1)
        if self._zoned is None:
            return self._next_wall_time(start)
        return self._next_on_clock(self._zoned, start)

    def _offset(self, moment: datetime) -> timedelta:
        return moment.astimezone(self.timezone).utcoffset() or timedelta(0)

    def _next_on_clock(self, zoned: CronTrigger, start: datetime) -> datetime | None:
        moment = _as_utc(zoned.get_next_fire_time(None, start))
        # Why the loop: for a wall time the spring change skips, APScheduler fires an
        # hour later (02:30 -> 03:30); crontab runs a clock-following expression by the
        # clock as it is, so a fire whose local time the expression does not name is
        # passed over.
        while moment is not None and not self._names(moment):
            moment = _as_utc(zoned.get_next_fire_time(None, moment + _MICROSECOND))
        return moment

    def _names(self, moment: datetime) -> bool:
        """Whether the expression names the local wall time of ``moment`` (UTC)."""
        if self._offset(moment - timedelta(hours=3)) == self._offset(moment):
            return True  # no change of offset just before: nothing was shifted
        wall = moment.astimezone(self.timezone).replace(tzinfo=UTC, fold=0)
        return bool(self._wall.get_next_fire_time(None, wall) == wall)

    def _next_wall_time(self, start: datetime) -> datetime | None:
        wall = start.astimezone(self.timezone).replace(tzinfo=UTC, fold=0)
        # Why: when `start` is the very moment the clocks jumped forward, the wall
        # times of the gap run at `start` too; look from the gap's beginning.
        jump = self._offset(start) - self._offset(start - _MICROSECOND)
        if jump > timedelta(0):
            wall -= jump
        while True:
            named = self._wall.get_next_fire_time(None, wall)
            if named is None:
                return None
            instant = self._instant(named.replace(tzinfo=None))
            if instant >= start:
                return instant
            # A wall time the autumn change repeats: it ran the first time.
            wall = named + timedelta(seconds=1)

    def _instant(self, wall: datetime) -> datetime:
        """When a local wall time happens: its first occurrence when the autumn change
        repeats it, the moment the clocks land when the spring change skips it."""
        first = wall.replace(tzinfo=self.timezone, fold=0).astimezone(UTC)
        if first.astimezone(self.timezone).replace(tzinfo=None) == wall:
            return first
        # In the gap. PEP 495: fold=0 reads it with the offset from before the change
        # (an instant after the change), fold=1 with the offset after (an instant before).
        after = first
        before = wall.replace(tzinfo=self.timezone, fold=1).astimezone(UTC)
        landed = self._offset(after)
        while after - before > timedelta(seconds=1):
            middle = before + timedelta(seconds=int((after - before).total_seconds()) // 2)
            if self._offset(middle) == landed:
                after = middle
            else:
                before = middle
        return after

    def __str__(self) -> str:
        return f"cron[{self.expression}] {self.timezone.key}"

    def __repr__(self) -> str:
        return f"<CronSlots {self.expression!r} {self.timezone.key}>"


def parse_cron(expr: str, tz: ZoneInfo) -> CronSlots:
    """A five-field cron expression as a trigger in ``tz``, or :class:`InvalidCron`
    saying what is wrong (how many fields, which field and what it takes)."""
    text = " ".join(expr.lower().split())
    fields = text.split(" ") if text else []
    if len(fields) != 5:
        raise InvalidCron(expr, f"it has {len(fields)} field{'s' if len(fields) != 1 else ''}")
    values: dict[str, str] = {}
    for (label, name, allowed), value in zip(_FIELDS, fields, strict=True):
        if not _TOKEN.fullmatch(value):
            raise InvalidCron(expr, f"the {label} field `{value}` is not valid: it takes {allowed}")
        values[name] = _expand_day_of_week(value, expr) if name == "day_of_week" else value
    if values["day"] != "*" and values["day_of_week"] != "*":
        raise InvalidCron(
            expr,
            "it sets both day-of-month and day-of-week, which crontab reads as either one "
            "and this scheduler as both; set one of them to `*`",
        )
    try:
        return CronSlots(text, values, tz)
    except ValueError:
        pass
    # Why one field at a time, and only now: APScheduler's message does not say which
    # field is wrong, and building a trigger per field costs 6x on every start-up.
    for (label, name, allowed), value in zip(_FIELDS, fields, strict=True):
        try:
            CronTrigger(**{name: values[name]}, timezone=tz)
        except ValueError as exc:
            raise InvalidCron(
                expr, f"the {label} field `{value}` is not valid: it takes {allowed}"
            ) from exc
    raise InvalidCron(expr, "its fields do not make a valid schedule")


def parse_at(text: str, tz: ZoneInfo, now: datetime) -> datetime:
    """When a one-shot ``at:`` runs, in UTC: ISO 8601 (``2026-12-24T09:00``, read in
    ``tz`` unless it carries an offset; seconds optional) or relative (``in 10m``,
    ``in 2h``, ``in 1d``, ``in 1h 30m``, ``in 90s``). :class:`InvalidTime` when it
    cannot be read or is not in the future."""
    clean = " ".join(text.strip().lower().split())
    if not clean:
        raise InvalidTime(f"give a time, {_EXAMPLES}")
    shown = text.strip() if len(text.strip()) <= 40 else text.strip()[:39] + "…"
    relative = _RELATIVE.fullmatch(clean)
    if relative:
        seconds = 0
        for amount, unit in _RELATIVE_PART.findall(relative.group(1)):
            if unit not in _UNITS:
                raise InvalidTime(
                    f"`{shown}`: {unit!r} is not a unit I know; use s, m, h, d or w, {_EXAMPLES}"
                )
            seconds += int(amount) * _UNITS[unit]
        if seconds <= 0:
            raise InvalidTime(f"`{shown}` is now, not later; {_EXAMPLES}")
        if seconds > MAX_AHEAD.total_seconds():
            raise InvalidTime(f"`{shown}` is more than ten years away")
        return now.astimezone(UTC) + timedelta(seconds=seconds)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", clean):
        raise InvalidTime(f"`{shown}` has no time of day; add one, like `{clean}T09:00`")
    if not re.match(r"^\d{4}-\d{2}-\d{2}[t ]\d", clean):
        raise InvalidTime(f"I cannot read `{shown}` as a time; {_EXAMPLES}")
    try:
        when = datetime.fromisoformat(clean.upper())
    except ValueError as exc:
        raise InvalidTime(f"I cannot read `{shown}` as a time; {_EXAMPLES}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    try:
        at = when.astimezone(UTC)
    except OverflowError:
        # Why: year 1 or 9999 in a zone whose offset carries it out of datetime's range.
        if when.year > now.year:
            raise InvalidTime(f"`{shown}` is more than ten years away") from None
        raise InvalidTime(f"`{shown}` is in the past; give a later time") from None
    if at <= now:
        raise InvalidTime(
            f"`{shown}` is in the past (it was {at:%Y-%m-%d %H:%M} UTC); give a later time"
        )
    if at - now > MAX_AHEAD:
        raise InvalidTime(f"`{shown}` is more than ten years away")
    return at


def is_top_of_hour(cron: str) -> bool:
    """Whether the expression's minute field is ``0``: the slots everyone else picks."""
    fields = cron.split()
    return len(fields) == 5 and fields[0].isdigit() and int(fields[0]) == 0


def stagger_s(schedule_id: int, cron: str | None) -> int:
    """How many seconds after its slot a top-of-hour cron schedule fires: 0..300 s from
    a hash of its id, the same in every process (``hash()`` is salted per process);
    0 for any other expression and for one-shots."""
    if cron is None or not is_top_of_hour(cron):
        return 0
    digest = hashlib.sha256(f"coterie-schedule-stagger:{schedule_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_STAGGER_S + 1)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def fires_between(
    trigger: BaseTrigger, start: datetime, end: datetime, *, limit: int | None = None
) -> list[datetime]:
    """The trigger's fire times after ``start`` and up to ``end`` (``start < t <= end``),
    in UTC, oldest first; at most ``limit`` of them."""
    out: list[datetime] = []
    # Why start + 1 us: with no previous fire, APScheduler returns the first time >= now.
    moment = trigger.get_next_fire_time(None, start + timedelta(microseconds=1))
    while moment is not None and moment <= end:
        out.append(_utc(moment))
        if limit is not None and len(out) >= limit:
            break
        # Why now=moment: APScheduler starts from min(now, previous + 1 us).
        moment = trigger.get_next_fire_time(moment, moment)
    return out


_WINDOWS = (
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=8),
    timedelta(days=32),
    timedelta(days=367),
    timedelta(days=3660),
)


def last_fires(
    trigger: BaseTrigger, since: datetime, until: datetime, n: int = 1
) -> list[datetime]:
    """The last ``n`` fire times after ``since`` and up to ``until``, oldest first.

    APScheduler 3 cannot step backwards, so this looks forward over growing windows
    ending at ``until`` (an hour, a day, a week, ...): a minutely schedule down for a
    month costs an hour of fires, not a month of them.
    """
    for window in _WINDOWS:
        start = max(since, until - window)
        found = fires_between(trigger, start, until)
        if len(found) >= n or start == since:
            return found[-n:]
    return fires_between(trigger, since, until)[-n:]


def runs_per_week(cron: str, tz: ZoneInfo, now: datetime) -> float:
    """How many times a week the expression fires, counted from ``now``: over the next
    week, or the next year when it fires less than four times a week."""
    trigger = parse_cron(cron, tz)
    week = fires_between(trigger, now, now + timedelta(weeks=1), limit=20_000)
    if len(week) >= 4:
        return float(len(week))
    year = fires_between(trigger, now, now + timedelta(weeks=52))
    return len(year) / 52


def min_gap_s(
    cron: str, tz: ZoneInfo, now: datetime, *, horizon: timedelta = timedelta(weeks=5)
) -> float:
    """The smallest gap in seconds between two consecutive fires over the next weeks
    (``horizon``, at most 3,000 fires; DST changes included); ``inf`` when it fires
    fewer than twice in that time."""
    trigger = parse_cron(cron, tz)
    fires = fires_between(trigger, now, now + horizon, limit=3_000)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]
    return min(gaps) if gaps else math.inf


def _duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def check_interval(cron: str, tz: ZoneInfo, now: datetime, min_interval_s: float) -> float:
    """The expression's smallest gap (:func:`min_gap_s`), or :class:`TooFrequent` when it
    is under ``min_interval_s`` (``COTERIE_SCHEDULE_MIN_INTERVAL_S``)."""
    gap = min_gap_s(cron, tz, now)
    if gap < min_interval_s:
        raise TooFrequent(
            f"`{cron}` runs {_duration(gap)} apart at its closest; schedules here may run "
            f"at most every {_duration(min_interval_s)}"
        )
    return gap
