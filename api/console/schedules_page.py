"""The programme schedules page: a week's calendar per region, and the form that keeps a schedule
(saved through the API by `static/schedules.js`, which shows the conflicts the API reports)."""

from datetime import date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse
from sqlmodel import Session, col, select

from api.auth import ensure_covers, sees
from api.console.pages import ReaderDep, children_of, page
from api.deps import ControllerDep, SessionDep
from api.routes.schedules import schedule_regions
from controller.accounts import Role
from controller.models import Region, Schedule
from controller.programmes import list_programmes
from controller.schedules import CalendarEntry, calendar, get_schedule
from devices.messages import RegionCode, now_utc

router = APIRouter(include_in_schema=False)

PRESETS = {
    "": "once",
    "FREQ=DAILY": "daily",
    "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR": "weekdays",
    "FREQ=WEEKLY": "weekly",
}


@router.get("/schedules", response_class=HTMLResponse)
def schedules(
    request: Request,
    reader: ReaderDep,
    session: SessionDep,
    controller: ControllerDep,
    region: Annotated[RegionCode | None, Query()] = None,
    week: Annotated[date | None, Query(description="any day of the week to show")] = None,
) -> HTMLResponse:
    region = region or reader.who.region
    ensure_covers(reader.who, region, "the region asked for")
    zone = ZoneInfo(controller.settings.timezone)
    today = now_utc().astimezone(zone).date()
    monday = (week or today) - timedelta(days=(week or today).weekday())
    start = datetime.combine(monday, time(), zone)
    entries, truncated = calendar(session, start, start + timedelta(days=7), region)
    days = [monday + timedelta(days=n) for n in range(7)]
    by_day: dict[date, list[CalendarEntry]] = {day: [] for day in days}
    for entry in entries:
        by_day.setdefault(entry.local.date(), []).append(entry)
    kept = [s for s in _all(session) if sees(reader.who, schedule_regions(session, s))]
    return page(
        request,
        "schedules.html",
        reader,
        region=region,
        regions=_choices(session, reader.who.region),
        days=days,
        today=today,
        by_day=by_day,
        truncated=truncated,
        previous=monday - timedelta(days=7),
        following=monday + timedelta(days=7),
        schedules=kept,
        can_edit=reader.who.at_least(Role.OPERATOR),
    )


@router.get("/schedules/new", response_class=HTMLResponse)
def new_schedule(request: Request, reader: ReaderDep, session: SessionDep) -> HTMLResponse:
    return _form(request, reader, session, None)


@router.get("/schedules/{schedule_id}/edit", response_class=HTMLResponse)
def edit_schedule(schedule_id: str, request: Request, reader: ReaderDep, session: SessionDep) -> HTMLResponse:
    found = get_schedule(session, schedule_id)
    if not sees(reader.who, schedule_regions(session, found)):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"schedule {schedule_id} does not play within your region"
        )
    return _form(request, reader, session, found)


def _form(request: Request, reader: ReaderDep, session: Session, schedule: Schedule | None) -> HTMLResponse:
    root = session.get(Region, reader.who.region)
    preset = PRESETS.get(schedule.rrule or "", "custom") if schedule is not None else "daily"
    return page(
        request,
        "schedule_form.html",
        reader,
        schedule=schedule,
        preset=preset,
        presets=PRESETS,
        programmes=list_programmes(session, 1000),
        root=root,
        children=children_of(session, reader.who.region),
        chosen=set(schedule.regions) if schedule is not None else set(),
    )


def _all(session: Session) -> list[Schedule]:
    return list(session.exec(select(Schedule).order_by(col(Schedule.name))).all())


def _choices(session: Session, code: str) -> list[Region]:
    """The principal's region and the regions down to township level, for the region selector."""
    query = select(Region).where(col(Region.code).startswith(code), col(Region.level) != "village")
    return list(session.exec(query.order_by(col(Region.code))).all())
