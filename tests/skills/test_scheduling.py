"""skills.scheduling: zones, cron expressions read as crontab reads them, at: times,
stagger, and the fire arithmetic the scheduler stands on (DST included)."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from skills.errors import InvalidCron, InvalidTime, TooFrequent, UnknownTimezone
from skills.scheduling import (
    MAX_STAGGER_S,
    check_interval,
    fires_between,
    last_fires,
    min_gap_s,
    parse_at,
    parse_cron,
    runs_per_week,
    stagger_s,
    zone,
)

UTC_ZONE = zone("UTC")
PARIS = zone("Europe/Paris")
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a Wednesday


# --- zone ------------------------------------------------------------------------


def test_zone_knows_iana_names_and_utc_in_any_case() -> None:
    assert zone("Europe/Paris").key == "Europe/Paris"
    assert zone(" America/New_York ").key == "America/New_York"
    assert zone("utc").key == "UTC"


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "Europe", "../../etc/passwd", "/etc/x"])
def test_zone_refuses_what_is_not_a_zone(name: str) -> None:
    with pytest.raises(UnknownTimezone, match="IANA name"):
        zone(name)


# --- parse_cron ------------------------------------------------------------------


def _fires(expr: str, tz: object = UTC_ZONE, n: int = 5) -> list[datetime]:
    trigger = parse_cron(expr, tz)  # type: ignore[arg-type]
    return fires_between(trigger, NOW, NOW + timedelta(days=60), limit=n)


def test_day_of_week_is_read_as_crontab_reads_it() -> None:
    # APScheduler 3 numbers days from Monday = 0: its from_crontab would run `1-5`
    # Tuesday to Saturday. Crontab's 1-5 is Monday to Friday.
    days = {d.strftime("%a") for d in _fires("0 9 * * 1-5", n=10)}
    assert days == {"Mon", "Tue", "Wed", "Thu", "Fri"}
    assert {d.strftime("%a") for d in _fires("0 9 * * 0")} == {"Sun"}
    assert {d.strftime("%a") for d in _fires("0 9 * * 7")} == {"Sun"}
    assert {d.strftime("%a") for d in _fires("0 9 * * 5-7", n=6)} == {"Fri", "Sat", "Sun"}
    assert {d.strftime("%a") for d in _fires("0 9 * * sat,sun", n=6)} == {"Sat", "Sun"}
    assert {d.strftime("%a") for d in _fires("0 9 * * 0-6", n=7)} == {
        "Sun",
        "Mon",
        "Tue",
        "Wed",
        "Thu",
        "Fri",
        "Sat",
    }


def test_cron_is_read_in_its_zone() -> None:
    first = _fires("30 9 * * *", PARIS, n=1)[0]
    assert first == datetime(2026, 12, 3, 8, 30, tzinfo=UTC)  # 09:30 CET


@pytest.mark.parametrize(
    ("expr", "said"),
    [
        ("* * *", "it has 3 fields"),
        ("0 9 * * * *", "it has 6 fields"),
        ("", "it has 0 fields"),
        ("61 * * * *", "the minute field `61` is not valid: it takes 0-59"),
        ("0 24 * * *", "the hour field `24` is not valid: it takes 0-23"),
        ("0 9 0 * *", "the day-of-month field `0` is not valid: it takes 1-31"),
        ("0 9 * 13 *", "the month field `13` is not valid: it takes 1-12 or jan-dec"),
        ("0 9 * * 8", "the day-of-week field `8` is not valid: it takes 0-7"),
        ("0 9 * * fri-mon", "the day-of-week field `fri-mon` is not valid"),
        ("x 9 * * *", "the minute field `x` is not valid"),
        ("*/0 * * * *", "the minute field `*/0` is not valid"),
        ("0 9 1 * 1", "sets both day-of-month and day-of-week"),
        ("@daily", "it has 1 field"),
    ],
)
def test_a_bad_cron_says_what_is_wrong_and_gives_an_example(expr: str, said: str) -> None:
    with pytest.raises(InvalidCron) as caught:
        parse_cron(expr, UTC_ZONE)
    message = str(caught.value)
    assert said in message
    assert "e.g. `0 9 * * 1-5`" in message


# --- parse_at --------------------------------------------------------------------


def test_iso_times_are_read_in_the_zone_unless_they_carry_an_offset() -> None:
    assert parse_at("2026-12-24T09:00", PARIS, NOW) == datetime(2026, 12, 24, 8, 0, tzinfo=UTC)
    assert parse_at("2026-12-24 09:00:30", PARIS, NOW) == datetime(
        2026, 12, 24, 8, 0, 30, tzinfo=UTC
    )
    assert parse_at("2026-12-24T09:00+05:00", PARIS, NOW) == datetime(
        2026, 12, 24, 4, 0, tzinfo=UTC
    )
    assert parse_at("2026-12-24T09:00Z", PARIS, NOW) == datetime(2026, 12, 24, 9, 0, tzinfo=UTC)
    assert parse_at("2026-12-24T09:00", UTC_ZONE, NOW).tzinfo is UTC
    # Summer time in Paris is UTC+2.
    assert parse_at("2027-07-01T09:00", PARIS, NOW) == datetime(2027, 7, 1, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("in 10m", timedelta(minutes=10)),
        ("in 2h", timedelta(hours=2)),
        ("in 1d", timedelta(days=1)),
        ("in 90s", timedelta(seconds=90)),
        ("in 1h 30m", timedelta(hours=1, minutes=30)),
        ("In 5 minutes", timedelta(minutes=5)),
        ("in 1w", timedelta(weeks=1)),
    ],
)
def test_relative_times(text: str, delta: timedelta) -> None:
    assert parse_at(text, PARIS, NOW) == NOW + delta


@pytest.mark.parametrize("text", ["2026-12-01T09:00", "2026-12-02T12:00Z", "in 0m"])
def test_a_time_not_in_the_future_is_refused(text: str) -> None:
    with pytest.raises(InvalidTime, match=r"past|not later"):
        parse_at(text, UTC_ZONE, NOW)


@pytest.mark.parametrize("text", ["tomorrow", "", "9am", "in 5 fortnights", "2026-13-40T09:00"])
def test_an_unreadable_time_gives_examples(text: str) -> None:
    with pytest.raises(InvalidTime) as caught:
        parse_at(text, UTC_ZONE, NOW)
    assert "in 10m" in str(caught.value)


def test_a_date_without_a_time_asks_for_one() -> None:
    with pytest.raises(InvalidTime, match="no time of day"):
        parse_at("2026-12-24", UTC_ZONE, NOW)


def test_a_time_too_far_ahead_is_refused() -> None:
    with pytest.raises(InvalidTime, match="ten years"):
        parse_at("in 99999999d", UTC_ZONE, NOW)


@pytest.mark.parametrize(
    ("text", "tz", "said"),
    [
        ("0001-01-01T00:00", "Europe/Berlin", "in the past"),
        ("0001-01-01T00:30+01:00", "UTC", "in the past"),
        ("9999-12-31T23:59", "America/New_York", "ten years"),
        ("9999-12-31T23:00-05:00", "UTC", "ten years"),
    ],
)
def test_a_time_past_the_calendars_edge_in_utc_is_refused(text: str, tz: str, said: str) -> None:
    # Why: converting to UTC leaves datetime's range (years 1-9999): an OverflowError.
    with pytest.raises(InvalidTime, match=said):
        parse_at(text, zone(tz), NOW)


# --- stagger ---------------------------------------------------------------------


def test_stagger_only_on_top_of_hour_and_within_five_minutes() -> None:
    values = [stagger_s(i, "0 9 * * *") for i in range(1, 200)]
    assert all(0 <= v <= MAX_STAGGER_S for v in values)
    assert len(set(values)) > 100  # spread, not one value
    assert stagger_s(7, "0 * * * *") == stagger_s(7, "00 9 * * 1-5")  # the id decides
    for expr in ("5 9 * * *", "*/15 * * * *", "0,30 * * * *", "30 0 * * *"):
        assert stagger_s(7, expr) == 0
    assert stagger_s(7, None) == 0  # one-shots are not staggered


def test_stagger_is_the_same_in_another_process() -> None:
    # Why a subprocess with another hash seed: hash() would differ; sha256 does not.
    code = "from skills.scheduling import stagger_s; print(stagger_s(42, '0 9 * * *'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    assert int(out) == stagger_s(42, "0 9 * * *")


# --- fires, gaps, runs per week --------------------------------------------------


def test_fires_between_is_after_start_up_to_end_in_utc() -> None:
    trigger = parse_cron("0 * * * *", UTC_ZONE)
    start = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    got = fires_between(trigger, start, start + timedelta(hours=3))
    assert got == [start + timedelta(hours=h) for h in (1, 2, 3)]
    assert all(d.tzinfo is UTC for d in got)


def test_fires_across_dst_are_distinct_instants() -> None:
    # Paris springs forward on 2026-03-29 and falls back on 2026-10-25.
    trigger = parse_cron("30 9 * * *", PARIS)
    spring = fires_between(
        trigger, datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC)
    )
    assert spring == [
        datetime(2026, 3, 28, 8, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 7, 30, tzinfo=UTC),
        datetime(2026, 3, 30, 7, 30, tzinfo=UTC),
    ]
    hourly = parse_cron("0 * * * *", PARIS)
    autumn = fires_between(
        hourly, datetime(2026, 10, 24, 23, 30, tzinfo=UTC), datetime(2026, 10, 25, 2, 0, tzinfo=UTC)
    )
    # 02:00 happens twice that night: two slots, an hour apart.
    assert len(autumn) == len(set(autumn)) == 3


BERLIN = zone("Europe/Berlin")
# Berlin springs forward on 2026-03-29 (02:00 CET -> 03:00 CEST, 01:00 UTC) and falls
# back on 2026-10-25 (03:00 CEST -> 02:00 CET, 01:00 UTC).
SPRING = (datetime(2026, 3, 28, 22, tzinfo=UTC), datetime(2026, 3, 29, 4, tzinfo=UTC))
AUTUMN = (datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 4, tzinfo=UTC))


def _local(expr: str, window: tuple[datetime, datetime], tz: ZoneInfo = BERLIN) -> list[str]:
    """The fires in ``window`` as local wall times with their offset, ``02:30+0200``."""
    return [
        f.astimezone(tz).strftime("%H:%M%z") for f in fires_between(parse_cron(expr, tz), *window)
    ]


def test_a_wall_clock_time_runs_once_on_the_autumn_day() -> None:
    # The bug: 02:30 ran at 02:30 CEST and again at 02:30 CET, two slots, two charges.
    assert _local("30 2 * * *", AUTUMN) == ["02:30+0200"]
    assert fires_between(parse_cron("30 2 * * *", BERLIN), *AUTUMN) == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    ]
    assert _local("0,30 2 * * *", AUTUMN) == ["02:00+0200", "02:30+0200"]
    assert _local("30 1-3 * * *", AUTUMN) == ["01:30+0200", "02:30+0200", "03:30+0100"]


def test_a_wall_clock_time_the_spring_day_skips_runs_once_when_the_clocks_land() -> None:
    # 02:30 does not exist that night: cron runs it at 03:00 CEST, once (APScheduler
    # alone ran it at 03:30).
    landed = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert fires_between(parse_cron("30 2 * * *", BERLIN), *SPRING) == [landed]
    assert _local("0,30 2 * * *", SPRING) == ["03:00+0200"]  # two names, one slot
    assert _local("30 1-3 * * *", SPRING) == ["01:30+0100", "03:00+0200", "03:30+0200"]
    trigger = parse_cron("30 2 * * *", BERLIN)
    assert trigger.get_next_fire_time(None, landed) == landed
    assert trigger.get_next_fire_time(landed, landed) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)


def test_an_expression_with_a_star_follows_the_clock_as_cron_does() -> None:
    # `*` in the minute or hour: the repeated hour runs again, the skipped one not at all.
    assert _local("30 * * * *", AUTUMN)[2:5] == ["02:30+0200", "02:30+0100", "03:30+0100"]
    assert _local("30 * * * *", SPRING)[2:5] == ["01:30+0100", "03:30+0200", "04:30+0200"]
    assert _local("*/20 2 * * *", SPRING) == []
    assert len(_local("*/20 2 * * *", AUTUMN)) == 6
    assert _local("*/20 2,3 * * *", SPRING) == ["03:00+0200", "03:20+0200", "03:40+0200"]


@pytest.mark.parametrize(
    "name",
    [
        "Europe/Berlin",
        "America/New_York",
        "Australia/Sydney",
        "Australia/Lord_Howe",
        "America/Santiago",
        "Antarctica/Troll",
    ],
)
@pytest.mark.parametrize("expr", ["30 2 * * *", "0 1 * * *", "0 0 * * *", "45 23 * * *"])
def test_a_daily_wall_clock_time_runs_once_a_day_all_year(name: str, expr: str) -> None:
    # Zones that change by an hour, by 30 minutes (Lord Howe), by two hours (Troll), at
    # midnight (Santiago), north and south.
    tz = zone(name)
    year = fires_between(
        parse_cron(expr, tz), datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    )
    days = [f.astimezone(tz).date() for f in year]
    assert len(set(days)) == len(days) >= 364
    assert year == sorted(year) and all(f.tzinfo is UTC for f in year)


def test_last_fires_looks_back_without_walking_from_the_start() -> None:
    trigger = parse_cron("*/5 * * * *", UTC_ZONE)
    since = datetime(2025, 1, 1, tzinfo=UTC)  # down for nearly two years
    until = datetime(2026, 12, 2, 12, 7, tzinfo=UTC)
    assert last_fires(trigger, since, until, n=2) == [
        datetime(2026, 12, 2, 12, 0, tzinfo=UTC),
        datetime(2026, 12, 2, 12, 5, tzinfo=UTC),
    ]
    yearly = parse_cron("0 9 1 1 *", UTC_ZONE)
    assert last_fires(yearly, since, until) == [datetime(2026, 1, 1, 9, 0, tzinfo=UTC)]
    assert last_fires(trigger, until, until) == []


def test_min_gap_and_runs_per_week() -> None:
    assert min_gap_s("*/5 * * * *", UTC_ZONE, NOW) == 300
    assert min_gap_s("* * * * *", UTC_ZONE, NOW) == 60
    assert min_gap_s("0,2 9 * * *", UTC_ZONE, NOW) == 120
    assert min_gap_s("0 9 * * *", UTC_ZONE, NOW) == 86_400
    assert min_gap_s("0 9 29 2 *", UTC_ZONE, NOW) == math.inf  # fewer than two fires
    assert runs_per_week("0 9 * * 1-5", PARIS, NOW) == 5
    assert runs_per_week("*/5 * * * *", UTC_ZONE, NOW) == 7 * 24 * 12
    assert runs_per_week("0 9 1 * *", UTC_ZONE, NOW) == pytest.approx(12 / 52)


def test_too_frequent_is_computed_from_the_smallest_gap() -> None:
    assert check_interval("*/5 * * * *", UTC_ZONE, NOW, 300) == 300
    with pytest.raises(TooFrequent, match=r"runs 1 min apart at its closest.*every 5 min"):
        check_interval("* * * * *", UTC_ZONE, NOW, 300)
    # Mostly hourly, but two runs two minutes apart once a day: refused.
    with pytest.raises(TooFrequent, match="2 min apart"):
        check_interval("0,2 9 * * *", UTC_ZONE, NOW, 300)
    assert check_interval("0 9 * * *", PARIS, NOW, 300) == 86_400
