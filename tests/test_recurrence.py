"""Schedule recurrences (RFC 5545 via dateutil) in the county's time zone, without a server."""

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from controller.models import Schedule
from controller.schedules import ScheduleRejected, ScheduleSpec, occurrences, occurrences_limited, to_schedule

SHANGHAI = "Asia/Shanghai"
NOW = datetime(2026, 11, 27, tzinfo=UTC)


def schedule(start: str, rrule: str | None = None, **extra: Any) -> Schedule:
    spec = ScheduleSpec(
        name="农技",
        programme_id="p1",
        regions=["421202"],
        start=datetime.fromisoformat(start),
        rrule=rrule,
        **extra,
    )
    return to_schedule(spec, "s1", SHANGHAI, now=NOW)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_daily_at_0630_in_shanghai_is_2230_utc_the_day_before() -> None:
    daily = schedule("2026-12-01T06:30", "FREQ=DAILY")
    runs = occurrences(daily, utc("2026-11-30T00:00"), utc("2026-12-03T00:00"))
    assert runs == [utc("2026-11-30T22:30"), utc("2026-12-01T22:30"), utc("2026-12-02T22:30")]


def test_daily_runs_cross_month_and_year_ends_without_gaps() -> None:
    daily = schedule("2026-12-30T06:30", "FREQ=DAILY")
    runs = occurrences(daily, utc("2026-12-29T00:00"), utc("2027-01-02T00:00"))
    assert [r.astimezone(UTC).date().isoformat() for r in runs] == [
        "2026-12-29",
        "2026-12-30",
        "2026-12-31",
        "2027-01-01",
    ]


def test_the_31st_of_each_month_skips_months_without_one() -> None:
    monthly = schedule("2027-01-31T09:00", "FREQ=MONTHLY;BYMONTHDAY=31")
    runs = occurrences_limited(monthly, utc("2027-01-01T00:00"), 4)
    assert [r.astimezone(UTC).strftime("%m-%d") for r in runs] == ["01-31", "03-31", "05-31", "07-31"]


def test_weekdays_at_noon_skip_the_weekend() -> None:
    weekdays = schedule("2026-11-30T12:00", "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR")
    runs = occurrences(weekdays, utc("2026-11-30T00:00"), utc("2026-12-07T23:59"))
    assert [r.strftime("%a") for r in runs] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]


def test_mondays_of_the_farming_season_start_in_march_and_end_in_october() -> None:
    season = schedule("2027-01-04T07:00", "FREQ=WEEKLY;BYDAY=MO;BYMONTH=3,4,5,6,7,8,9,10")
    runs = occurrences(season, utc("2027-01-01T00:00"), utc("2027-12-31T00:00"))
    local = [r.astimezone(ZoneInfo(SHANGHAI)) for r in runs]
    assert local[0].isoformat() == "2027-03-01T07:00:00+08:00"
    assert local[-1].isoformat() == "2027-10-25T07:00:00+08:00"
    assert runs[0] == utc("2027-02-28T23:00")
    assert all(t.weekday() == 0 and 3 <= t.month <= 10 for t in local)
    assert len(runs) == 35


def test_once_is_one_run_and_until_stops_a_recurrence() -> None:
    once = schedule("2026-12-24T19:00")
    assert occurrences(once, utc("2026-12-01T00:00"), utc("2027-01-01T00:00")) == [utc("2026-12-24T11:00")]
    limited = schedule("2026-12-01T06:30", "FREQ=DAILY", until=datetime(2026, 12, 3, 6, 30))
    assert len(occurrences(limited, utc("2026-11-01T00:00"), utc("2027-01-01T00:00"))) == 3


def test_a_zone_with_daylight_saving_keeps_the_wall_clock_time() -> None:
    berlin = schedule("2027-03-27T08:00", "FREQ=DAILY", timezone="Europe/Berlin")
    runs = occurrences(berlin, utc("2027-03-27T00:00"), utc("2027-03-29T00:00"))
    assert runs == [utc("2027-03-27T07:00"), utc("2027-03-28T06:00")]


@pytest.mark.parametrize(
    ("start", "rrule", "extra", "message"),
    [
        ("2026-12-01T06:30", "FREQ=SOMETIMES", {}, "impossible recurrence"),
        ("2026-12-01T06:30", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", {}, "never occurs"),
        ("2026-12-01T06:30", "FREQ=DAILY", {"timezone": "Mars/Olympus_Mons"}, "unknown time zone"),
        ("2026-11-01T06:30", None, {}, "no run in the future"),
        ("2026-11-01T06:30", "FREQ=DAILY", {"until": datetime(2026, 11, 20)}, "no run in the future"),
        ("2026-12-01T06:30", "FREQ=MINUTELY", {}, "less than 5 minutes apart"),
    ],
)
def test_a_recurrence_that_cannot_be_is_refused_with_the_reason(
    start: str, rrule: str | None, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ScheduleRejected, match=message):
        schedule(start, rrule, **extra)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"until": datetime(2026, 11, 1)}, "until is before start"),
        ({"missed": "grace"}, "missed=grace needs grace_s"),
        ({"regions": []}, "the target is empty"),
        ({"missed": "grace", "grace_s": 3600, "expires_in_s": 1800}, "grace_s is longer than expires_in_s"),
    ],
)
def test_a_schedule_that_makes_no_sense_is_refused(extra: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {
        "name": "x",
        "programme_id": "p1",
        "regions": ["421202"],
        "start": datetime(2026, 12, 1),
    }
    with pytest.raises(ValueError, match=message):
        ScheduleSpec(**(values | extra))


def test_expanding_from_a_later_occurrence_gives_the_same_runs_as_from_the_start() -> None:
    hourly = schedule("2023-01-01T00:15", "FREQ=HOURLY;INTERVAL=3")
    first = occurrences(hourly, utc("2026-11-01T00:00"), utc("2026-11-02T00:00"))
    again = occurrences(hourly, utc("2026-11-01T00:00"), utc("2026-11-02T00:00"))
    later = occurrences(hourly, utc("2026-11-01T05:00"), utc("2026-11-02T00:00"))
    assert first == again and later == [t for t in first if t > utc("2026-11-01T05:00")]
    assert len(first) == 8
