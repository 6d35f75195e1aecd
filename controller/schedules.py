"""Programme schedules: when (an RFC 5545 recurrence in a time zone), what, and where.

Recurrences are parsed and expanded by dateutil's `rrule`, in the schedule's wall-clock time and
zone: "daily at 06:30" is 06:30 in 咸安区 whatever UTC says, across month ends and (in zones that
have them) daylight-saving changes. Examples, with `start` giving the first date and the time:

- daily at 06:30: `start` 2026-12-01T06:30, `rrule` `FREQ=DAILY`
- weekdays at 12:00: `FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR`
- every Monday of the farming season, 1 March to 31 October: `FREQ=WEEKLY;BYDAY=MO;BYMONTH=3,4,5,6,7,8,9,10`
- once: no `rrule`
"""

import bisect
import itertools
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrule, rrulestr
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from sqlmodel import Session, col, func, select

from controller.broadcasts import BroadcastRejected, BroadcastRequest, resolve_target
from controller.groups import GroupId
from controller.models import Programme, Schedule, ScheduleRun, TerminalGroup
from controller.programmes import ProgrammeNotFound, get_programme
from controller.terminals import terminal_regions
from devices.messages import RegionCode
from devices.priority import BroadcastKind

CONFLICT_HORIZON = timedelta(days=14)
MIN_INTERVAL = timedelta(minutes=5)
MAX_OCCURRENCES = 20_000
# Broadcast Mandarin is about 4 characters a second; a programme without audio lasts that long.
_CHARS_PER_S = 4.0

LocalDateTime = Annotated[
    datetime,
    # Documented as it is written and answered: JSON Schema's date-time demands an offset.
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$",
            "description": "a wall-clock date and time without an offset, e.g. 2026-12-01T06:30",
        }
    ),
]
"""A date and time on the wall clock of a schedule's `timezone`, without an offset."""


class ScheduleSpec(BaseModel):
    """A schedule as an operator writes it; times are wall-clock times in `timezone`."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    programme_id: Annotated[str, Field(min_length=1, max_length=32)]
    regions: Annotated[list[RegionCode], Field(max_length=500)] = []
    groups: Annotated[list[GroupId], Field(max_length=50)] = []
    start: LocalDateTime = Field(description="the first run's local date and time, e.g. 2026-12-01T06:30")
    rrule: Annotated[str, Field(max_length=500)] | None = Field(
        default=None, description="RFC 5545 RRULE, e.g. FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR; none: once"
    )
    until: LocalDateTime | None = Field(default=None, description="no run after this local date and time")
    timezone: str | None = Field(default=None, description="IANA zone; default the county's")
    expires_in_s: Annotated[int, Field(ge=60, le=86_400)] = 1800
    """each run may be played (or resumed after an emergency) until this long after its time"""
    missed: Literal["skip", "grace"] = "skip"
    """a run missed while the controller was down: skipped, or played late if within `grace_s`"""
    grace_s: Annotated[int, Field(ge=0, le=86_400)] = 0
    enabled: bool = True

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if not self.regions and not self.groups:
            raise ValueError("the target is empty: give regions or groups")
        if self.start.tzinfo is not None or (self.until is not None and self.until.tzinfo is not None):
            raise ValueError(
                "start and until are wall-clock times in `timezone`: give them without an offset"
            )
        if self.until is not None and self.until < self.start:
            raise ValueError("until is before start: the schedule would end before it begins")
        if self.missed == "grace" and self.grace_s == 0:
            raise ValueError("missed=grace needs grace_s, the lateness still worth playing (seconds)")
        if self.grace_s > self.expires_in_s:
            raise ValueError(
                "grace_s is longer than expires_in_s: a run that late would already have expired"
            )
        return self


class ScheduleRejected(ValueError):
    pass


class ScheduleNotFound(LookupError):
    pass


def zone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleRejected(
            f"unknown time zone {name!r}; use an IANA name such as Asia/Shanghai"
        ) from None


def recurrence(schedule: Schedule) -> rrule | None:
    if schedule.rrule is None:
        return None
    text = schedule.rrule.removeprefix("RRULE:")
    try:
        rule = rrulestr(f"RRULE:{text}", dtstart=schedule.start, ignoretz=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ScheduleRejected(f"impossible recurrence {schedule.rrule!r}: {exc}") from None
    if not isinstance(rule, rrule):
        raise ScheduleRejected(f"impossible recurrence {schedule.rrule!r}: give one RRULE")
    return rule


def occurrences(schedule: Schedule, after: datetime, before: datetime) -> list[datetime]:
    """Runs strictly after `after` and at or before `before` (aware), as UTC times."""
    return _runs(schedule, after, before=before, count=MAX_OCCURRENCES)


def occurrences_limited(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next `count` runs strictly after `after`, as UTC times."""
    return _runs(schedule, after, before=None, count=count)


def next_run(schedule: Schedule, after: datetime) -> datetime | None:
    """The first run strictly after `after`, if there is one."""
    runs = occurrences_limited(schedule, after, 1)
    return runs[0] if runs else None


# A later occurrence of each recurrence to expand it from: dateutil walks from DTSTART every time,
# which for an hourly rule started years ago is hundreds of milliseconds per question.
_ANCHORS: dict[tuple[str, datetime], datetime] = {}
_ANCHORS_MAX = 100_000


def _runs(schedule: Schedule, after: datetime, *, before: datetime | None, count: int) -> list[datetime]:
    zone = zone_of(schedule.timezone)
    local_after = after.astimezone(zone).replace(tzinfo=None)
    local_before = before.astimezone(zone).replace(tzinfo=None) if before is not None else None
    if schedule.until is not None:
        local_before = schedule.until if local_before is None else min(local_before, schedule.until)
    rule = recurrence(schedule)
    if rule is None:
        local = [schedule.start] if schedule.start > local_after else []
    else:
        # Started from one of its own occurrences a rule gives the same sequence, unless a COUNT
        # is counted from the first.
        key = (schedule.rrule or "", schedule.start)
        anchor = _ANCHORS.get(key)
        if anchor is not None and anchor <= local_after and "COUNT=" not in key[0].upper():
            rule = rule.replace(dtstart=anchor)
        local = []
        for moment in rule.xafter(local_after, count=count, inc=False):
            if local_before is not None and moment > local_before:
                break
            local.append(moment)
        if local and (anchor is None or anchor < local[0]):
            if len(_ANCHORS) >= _ANCHORS_MAX:
                _ANCHORS.clear()
            _ANCHORS[key] = local[0]
    if local_before is not None:
        local = [m for m in local if m <= local_before]
    return [moment.replace(tzinfo=zone).astimezone(UTC) for moment in local]


def duration_of(programme: Programme) -> timedelta:
    if programme.duration_s:
        return timedelta(seconds=programme.duration_s)
    return timedelta(seconds=max(3.0, len(programme.text or "") / _CHARS_PER_S))


def request_for(schedule: Schedule, programme: Programme) -> BroadcastRequest:
    """The broadcast one run of the schedule makes, with the programme's text (the caller adds its audio)."""
    return BroadcastRequest(
        kind=BroadcastKind.PROGRAMME,
        regions=schedule.regions,
        groups=schedule.groups,
        text=programme.text or programme.title,
        language=programme.language,
        expires_in=schedule.expires_in_s,
        issuer_region=schedule.issuer_region,
    )


@dataclass(frozen=True)
class Conflict:
    """Another schedule that would play on some of the same terminals at the same time."""

    schedule_id: str
    name: str
    terminals: int
    first_overlap: datetime
    overlaps: int


def to_schedule(spec: ScheduleSpec, schedule_id: str, default_zone: str, now: datetime) -> Schedule:
    schedule = Schedule(
        id=schedule_id,
        name=spec.name,
        programme_id=spec.programme_id,
        regions=sorted(set(spec.regions)),
        groups=sorted(set(spec.groups)),
        start=spec.start,
        rrule=spec.rrule.removeprefix("RRULE:") if spec.rrule else None,
        until=spec.until,
        timezone=spec.timezone or default_zone,
        expires_in_s=spec.expires_in_s,
        missed=spec.missed,
        grace_s=spec.grace_s,
        enabled=spec.enabled,
    )
    zone_of(schedule.timezone)
    recurrence(schedule)
    if not occurrences_limited(schedule, datetime(1970, 1, 1, tzinfo=UTC), 1):
        raise ScheduleRejected(
            "the recurrence never occurs (e.g. 30 February, or an until before the first run)"
        )
    upcoming = occurrences_limited(schedule, now, 3)
    if not upcoming:
        raise ScheduleRejected(
            "the schedule has no run in the future: a single run in the past, or until has passed"
        )
    if any(b - a < MIN_INTERVAL for a, b in itertools.pairwise(upcoming)):
        raise ScheduleRejected(f"runs are less than {MIN_INTERVAL.seconds // 60} minutes apart")
    return schedule


def save_schedule(
    session: Session,
    spec: ScheduleSpec,
    default_zone: str,
    now: datetime,
    schedule_id: str | None = None,
    issuer_region: str | None = None,
) -> tuple[Schedule, list[Conflict]]:
    """Check and store a schedule (new, or replacing `schedule_id`); returns it with its conflicts.
    Its runs are issued for `issuer_region` (the region of whoever keeps it; default the county's).

    Raises ScheduleRejected (422), ProgrammeNotFound (422: the programme named does not exist),
    ScheduleNotFound (404: no schedule to replace). Nothing is stored unless all is well.
    """
    try:
        programme = get_programme(session, spec.programme_id)
    except ProgrammeNotFound as exc:
        raise ScheduleRejected(str(exc)) from None
    existing = session.get(Schedule, schedule_id) if schedule_id is not None else None
    if schedule_id is not None and existing is None:
        raise ScheduleNotFound(f"no schedule {schedule_id!r}")
    schedule = to_schedule(spec, schedule_id or "s" + secrets.token_hex(8), default_zone, now)
    schedule.issuer_region = issuer_region
    try:
        terminals = set(resolve_target(session, request_for(schedule, programme), issuer_region="").reached)
    except BroadcastRejected as exc:
        raise ScheduleRejected(str(exc)) from None
    found = conflicts(session, schedule, duration_of(programme), terminals, now)
    if existing is not None:
        for name, value in schedule.model_dump(exclude={"id", "created_at"}).items():
            setattr(existing, name, value)
        existing.updated_at = now
        schedule = existing
    session.add(schedule)
    session.commit()
    session.refresh(schedule)
    return schedule, found


def conflicts(
    session: Session, schedule: Schedule, length: timedelta, terminals: set[str], now: datetime
) -> list[Conflict]:
    """Enabled schedules that would play on some of the same terminals at overlapping times within
    the next two weeks (the priority rule decides between them when it happens)."""
    if not schedule.enabled or not terminals:
        return []
    mine = occurrences(schedule, now, now + CONFLICT_HORIZON)
    found = []
    others = session.exec(select(Schedule).where(Schedule.enabled == True, Schedule.id != schedule.id)).all()  # noqa: E712
    for other in others:
        programme = session.get(Programme, other.programme_id)
        if programme is None:
            continue
        try:
            reached = resolve_target(session, request_for(other, programme), issuer_region="").reached
        except BroadcastRejected:
            continue  # its target no longer resolves (a group deleted): it would not play either
        shared = terminals & set(reached)
        if not shared:
            continue
        their_length = duration_of(programme)
        theirs = occurrences(other, now - their_length, now + CONFLICT_HORIZON)
        overlapping = [a for a in mine if _overlaps(a, length, theirs, their_length)]
        if overlapping:
            found.append(Conflict(other.id, other.name, len(shared), overlapping[0], len(overlapping)))
    return found


def _overlaps(start: datetime, length: timedelta, others: list[datetime], other_length: timedelta) -> bool:
    """Whether [start, start + length) meets any [b, b + other_length) of the sorted `others`."""
    return bisect.bisect_left(others, start + length) > bisect.bisect_right(others, start - other_length)


def get_schedule(session: Session, schedule_id: str) -> Schedule:
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        raise ScheduleNotFound(f"no schedule {schedule_id!r}")
    return schedule


def delete_schedule(session: Session, schedule_id: str) -> None:
    session.delete(get_schedule(session, schedule_id))
    session.commit()


def enabled_schedules(session: Session) -> list[Schedule]:
    return list(session.exec(select(Schedule).where(Schedule.enabled == True)).all())  # noqa: E712


def last_runs(session: Session) -> dict[str, datetime]:
    """Each schedule's latest claimed run (played, skipped or failed)."""
    query = select(ScheduleRun.schedule_id, func.max(ScheduleRun.due_at)).group_by(
        col(ScheduleRun.schedule_id)
    )
    return {schedule_id: due_at for schedule_id, due_at in session.exec(query).all()}


def recent_runs(session: Session, schedule_id: str, limit: int) -> list[ScheduleRun]:
    query = select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id)
    return list(session.exec(query.order_by(col(ScheduleRun.due_at).desc()).limit(limit)).all())


class CalendarEntry(BaseModel):
    schedule_id: str
    name: str
    programme_id: str
    programme_title: str
    at: datetime
    local: datetime
    ends: datetime
    regions: list[str]
    groups: list[str]


MAX_CALENDAR_ENTRIES = 10_000


def calendar(
    session: Session, start: datetime, end: datetime, region: str | None
) -> tuple[list[CalendarEntry], bool]:
    """What plays from `start` to `end` (where it reaches `region`), in time order; and whether the
    list was cut at MAX_CALENDAR_ENTRIES."""
    entries: list[CalendarEntry] = []
    for schedule in enabled_schedules(session):
        if region is not None and not _reaches(session, schedule, region):
            continue
        programme = session.get(Programme, schedule.programme_id)
        if programme is None:
            continue
        zone = zone_of(schedule.timezone)
        length = duration_of(programme)
        for at in occurrences(schedule, start - timedelta(microseconds=1), end - timedelta(microseconds=1)):
            entries.append(
                CalendarEntry(
                    schedule_id=schedule.id,
                    name=schedule.name,
                    programme_id=programme.id,
                    programme_title=programme.title,
                    at=at,
                    local=at.astimezone(zone),
                    ends=at + length,
                    regions=schedule.regions,
                    groups=schedule.groups,
                )
            )
    entries.sort(key=lambda e: (e.at, e.schedule_id))
    return entries[:MAX_CALENDAR_ENTRIES], len(entries) > MAX_CALENDAR_ENTRIES


def _reaches(session: Session, schedule: Schedule, region: str) -> bool:
    """Whether the schedule's target and `region` overlap (one contains the other, or a group's
    region or terminal lies inside)."""
    regions = set(schedule.regions)
    for group in session.exec(select(TerminalGroup).where(col(TerminalGroup.id).in_(schedule.groups))).all():
        regions.update(group.regions)
        regions.update(terminal_regions(session, group.terminals).values())
    return any(r.startswith(region) or region.startswith(r) for r in regions)
