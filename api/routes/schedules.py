"""Programme schedules: recurring plays per area, their conflicts, and the calendar of what plays."""

from datetime import datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from api.auth import (
    AUTH_RESPONSES,
    UNREADABLE,
    Operator,
    Problem,
    Responses,
    Viewer,
    covering,
    ensure_covers,
    sees,
)
from api.deps import ControllerDep, SessionDep, read
from api.routes.groups import target_regions
from controller.accounts import Principal
from controller.models import Schedule, ScheduleRun
from controller.schedules import (
    CalendarEntry,
    Conflict,
    LocalDateTime,
    ScheduleSpec,
    calendar,
    delete_schedule,
    get_schedule,
    occurrences_limited,
    recent_runs,
    save_schedule,
)
from controller.service import Controller
from devices.messages import RegionCode, now_utc

router = APIRouter(prefix="/schedules", tags=["schedules"], responses=AUTH_RESPONSES)
_UNKNOWN: Responses = {404: {"model": Problem, "description": "no such schedule"}}
_INVALID: Responses = {
    **UNREADABLE,
    422: {"model": Problem, "description": "what is wrong with the schedule"},
}
MAX_CALENDAR_SPAN = timedelta(days=62)


class SchedulePublic(BaseModel):
    id: str
    name: str
    programme_id: str
    regions: list[str]
    groups: list[str]
    start: LocalDateTime
    rrule: str | None
    until: LocalDateTime | None
    timezone: str
    expires_in_s: int
    missed: str
    grace_s: int
    enabled: bool
    issuer_region: str | None


class ConflictPublic(BaseModel):
    schedule_id: str
    name: str
    terminals: int = Field(description="terminals both would play on")
    first_overlap: datetime
    overlaps: int = Field(description="overlapping runs in the next 14 days")


class ScheduleSaved(SchedulePublic):
    conflicts: list[ConflictPublic] = Field(
        description="schedules that would play on some of the same terminals at the same time (a warning: "
        "when it happens, the priority rule decides)"
    )


class RunPublic(BaseModel):
    due_at: datetime
    started_at: datetime
    outcome: str
    broadcast_id: str | None
    detail: str | None


class ScheduleDetail(SchedulePublic):
    next_runs: list[datetime]
    runs: list[RunPublic]


class Calendar(BaseModel):
    entries: list[CalendarEntry]
    truncated: bool


def _saved(schedule: Schedule, conflicts: list[Conflict]) -> ScheduleSaved:
    return ScheduleSaved(
        **SchedulePublic.model_validate(schedule, from_attributes=True).model_dump(),
        conflicts=[ConflictPublic(**vars(c)) for c in conflicts],
    )


async def _may_keep(
    who: Principal, controller: Controller, spec: ScheduleSpec, schedule_id: str | None
) -> list[str]:
    """403 unless the schedule's target (and the one it replaces) lies within `who`'s region;
    returns the new target's regions."""
    target = await read(controller, lambda s: target_regions(s, list(spec.regions), list(spec.groups)))
    ensure_covers(who, target, "the schedule's target")
    if schedule_id is not None:
        existing = await read(
            controller, lambda session: schedule_regions(session, get_schedule(session, schedule_id))
        )
        ensure_covers(who, existing, f"schedule {schedule_id}")
    return target


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ScheduleSaved, responses=_INVALID)
async def create(spec: ScheduleSpec, who: Operator, controller: ControllerDep) -> ScheduleSaved:
    """Store a schedule for your region or below. 422 names what is wrong (an impossible
    recurrence, an unknown time zone or programme, an end before the start); nothing is stored then."""
    target = await _may_keep(who, controller, spec, None)
    now = now_utc()
    schedule, conflicts = await controller.writer.call(
        lambda session: save_schedule(session, spec, controller.settings.timezone, now, None, who.region)
    )
    controller.scheduler.reload()
    await controller.record(
        who.audit(
            "schedule.create", "schedule", schedule.id, covering(target, who.region), spec=_described(spec)
        )
    )
    return _saved(schedule, conflicts)


@router.put("/{schedule_id}", response_model=ScheduleSaved, responses={**_UNKNOWN, **_INVALID})
async def replace(
    schedule_id: str, spec: ScheduleSpec, who: Operator, controller: ControllerDep
) -> ScheduleSaved:
    target = await _may_keep(who, controller, spec, schedule_id)
    now = now_utc()
    schedule, conflicts = await controller.writer.call(
        lambda session: save_schedule(
            session, spec, controller.settings.timezone, now, schedule_id, who.region
        )
    )
    controller.scheduler.reload()
    await controller.record(
        who.audit(
            "schedule.update", "schedule", schedule_id, covering(target, who.region), spec=_described(spec)
        )
    )
    return _saved(schedule, conflicts)


def _described(spec: ScheduleSpec) -> dict[str, object]:
    return spec.model_dump(mode="json", exclude_none=True)


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_UNKNOWN)
async def delete(schedule_id: str, who: Operator, controller: ControllerDep) -> None:
    existing = await read(controller, lambda session: get_schedule(session, schedule_id))
    regions = await read(controller, lambda session: schedule_regions(session, existing))
    ensure_covers(who, regions, f"schedule {schedule_id}")
    await controller.writer.call(lambda session: delete_schedule(session, schedule_id))
    controller.scheduler.reload()
    await controller.record(
        who.audit(
            "schedule.delete", "schedule", schedule_id, covering(regions, who.region), name=existing.name
        )
    )


@router.get("", response_model=list[SchedulePublic])
def schedules(who: Viewer, session: SessionDep) -> list[Schedule]:
    """Schedules that play within your region."""
    found = session.exec(select(Schedule).order_by(col(Schedule.name))).all()
    return [schedule for schedule in found if sees(who, schedule_regions(session, schedule))]


def schedule_regions(session: Session, schedule: Schedule) -> list[str]:
    return target_regions(session, schedule.regions, schedule.groups)


@router.get(
    "/calendar",
    response_model=Calendar,
    responses={422: {"model": Problem, "description": "`to` not after `from`, or more than 62 days"}},
)
def schedule_calendar(
    who: Viewer,
    session: SessionDep,
    controller: ControllerDep,
    start: Annotated[datetime, Query(alias="from", description="ISO 8601; without an offset: county time")],
    end: Annotated[datetime, Query(alias="to")],
    region: Annotated[RegionCode | None, Query(description="only what reaches this region")] = None,
) -> Calendar:
    """What will play where and when within your region (or `region`, within yours), between
    `from` and `to` (at most 62 days)."""
    region = region or who.region
    ensure_covers(who, region, "the region asked for")
    zone = ZoneInfo(controller.settings.timezone)
    start, end = (t if t.tzinfo else t.replace(tzinfo=zone) for t in (start, end))
    if end <= start:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "`to` must be after `from`")
    if end - start > MAX_CALENDAR_SPAN:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "ask for at most 62 days at a time")
    entries, truncated = calendar(session, start, end, region)
    return Calendar(entries=entries, truncated=truncated)


@router.get("/{schedule_id}", response_model=ScheduleDetail, responses=_UNKNOWN)
def schedule(
    schedule_id: str, who: Viewer, session: SessionDep, runs: Annotated[int, Query(ge=0, le=500)] = 20
) -> ScheduleDetail:
    """A schedule, its next runs and how its last runs went."""
    found = get_schedule(session, schedule_id)
    if not sees(who, schedule_regions(session, found)):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"schedule {schedule_id} does not play within your region"
        )
    history: list[ScheduleRun] = recent_runs(session, schedule_id, runs)
    return ScheduleDetail(
        **SchedulePublic.model_validate(found, from_attributes=True).model_dump(),
        next_runs=occurrences_limited(found, now_utc(), 5) if found.enabled else [],
        runs=[RunPublic.model_validate(r, from_attributes=True) for r in history],
    )
