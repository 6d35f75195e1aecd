"""Programme schedules: recurring plays per area, their conflicts, and the calendar of what plays."""

from datetime import datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api.deps import ControllerDep, SessionDep
from controller.models import Schedule, ScheduleRun
from controller.schedules import (
    CalendarEntry,
    Conflict,
    ScheduleSpec,
    calendar,
    delete_schedule,
    get_schedule,
    occurrences_limited,
    recent_runs,
    save_schedule,
)
from devices.messages import RegionCode, now_utc

router = APIRouter(prefix="/schedules", tags=["schedules"])
MAX_CALENDAR_SPAN = timedelta(days=62)


class SchedulePublic(BaseModel):
    id: str
    name: str
    programme_id: str
    regions: list[str]
    groups: list[str]
    start: datetime
    rrule: str | None
    until: datetime | None
    timezone: str
    expires_in_s: int
    missed: str
    grace_s: int
    enabled: bool


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


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ScheduleSaved)
async def create(spec: ScheduleSpec, controller: ControllerDep) -> ScheduleSaved:
    """Store a schedule. 422 names what is wrong (an impossible recurrence, an unknown time zone or
    programme, an end before the start); nothing is stored then."""
    now = now_utc()
    schedule, conflicts = await controller.writer.call(
        lambda session: save_schedule(session, spec, controller.settings.timezone, now)
    )
    controller.scheduler.reload()
    return _saved(schedule, conflicts)


@router.put("/{schedule_id}", response_model=ScheduleSaved)
async def replace(schedule_id: str, spec: ScheduleSpec, controller: ControllerDep) -> ScheduleSaved:
    now = now_utc()
    schedule, conflicts = await controller.writer.call(
        lambda session: save_schedule(session, spec, controller.settings.timezone, now, schedule_id)
    )
    controller.scheduler.reload()
    return _saved(schedule, conflicts)


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(schedule_id: str, controller: ControllerDep) -> None:
    await controller.writer.call(lambda session: delete_schedule(session, schedule_id))
    controller.scheduler.reload()


@router.get("", response_model=list[SchedulePublic])
def schedules(session: SessionDep) -> list[Schedule]:
    return list(session.exec(select(Schedule).order_by(col(Schedule.name))).all())


@router.get("/calendar", response_model=Calendar)
def schedule_calendar(
    session: SessionDep,
    controller: ControllerDep,
    start: Annotated[datetime, Query(alias="from", description="ISO 8601; without an offset: county time")],
    end: Annotated[datetime, Query(alias="to")],
    region: Annotated[RegionCode | None, Query(description="only what reaches this region")] = None,
) -> Calendar:
    """What will play where and when, between `from` and `to` (at most 62 days)."""
    zone = ZoneInfo(controller.settings.timezone)
    start, end = (t if t.tzinfo else t.replace(tzinfo=zone) for t in (start, end))
    if end <= start:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "`to` must be after `from`")
    if end - start > MAX_CALENDAR_SPAN:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "ask for at most 62 days at a time")
    entries, truncated = calendar(session, start, end, region)
    return Calendar(entries=entries, truncated=truncated)


@router.get("/{schedule_id}", response_model=ScheduleDetail)
def schedule(
    schedule_id: str, session: SessionDep, runs: Annotated[int, Query(ge=0, le=500)] = 20
) -> ScheduleDetail:
    """A schedule, its next runs and how its last runs went."""
    found = get_schedule(session, schedule_id)
    history: list[ScheduleRun] = recent_runs(session, schedule_id, runs)
    return ScheduleDetail(
        **SchedulePublic.model_validate(found, from_attributes=True).model_dump(),
        next_runs=occurrences_limited(found, now_utc(), 5) if found.enabled else [],
        runs=[RunPublic.model_validate(r, from_attributes=True) for r in history],
    )
