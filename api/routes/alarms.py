"""Terminal fault alarms: list them, acknowledge them."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from api.auth import AUTH_RESPONSES, UNREADABLE, Operator, Problem, Viewer, ensure_covers
from api.deps import ControllerDep, SessionDep, read
from controller.alarms import acknowledge, alarm_region
from controller.models import Alarm, Terminal
from devices.messages import RegionCode, now_utc

router = APIRouter(prefix="/alarms", tags=["alarms"], responses=AUTH_RESPONSES)


class AlarmPublic(BaseModel):
    id: str
    terminal_id: str
    kind: str
    detail: str | None
    started_at: datetime
    ended_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None


class Acknowledgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Annotated[str, Field(max_length=500)] | None = Field(default=None, description="what is being done")


@router.get("", response_model=list[AlarmPublic])
def alarms(
    who: Viewer,
    session: SessionDep,
    active: Annotated[
        bool | None, Query(description="only open (true) or only cleared (false) alarms")
    ] = None,
    region: Annotated[RegionCode | None, Query(description="only terminals within this region")] = None,
    terminal: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> list[Alarm]:
    """Alarms of terminals within your region (or `region`, within yours), newest first."""
    region = region or who.region
    ensure_covers(who, region, "the region asked for")
    query = select(Alarm).join(Terminal, col(Terminal.id) == col(Alarm.terminal_id))
    query = query.where(col(Terminal.region_code).startswith(region))
    if active is not None:
        query = query.where(col(Alarm.ended_at).is_(None) if active else col(Alarm.ended_at).is_not(None))
    if terminal is not None:
        query = query.where(Alarm.terminal_id == terminal)
    return list(session.exec(query.order_by(col(Alarm.started_at).desc()).limit(limit)).all())


@router.post(
    "/{alarm_id}/acknowledge",
    response_model=AlarmPublic,
    responses={**UNREADABLE, 404: {"model": Problem, "description": "no such alarm"}},
)
async def acknowledge_alarm(
    alarm_id: str, who: Operator, controller: ControllerDep, body: Acknowledgement | None = None
) -> Alarm:
    """Record that you have seen the alarm; it stays open until the fault clears. 404 if unknown."""
    region = await read(controller, lambda session: alarm_region(session, alarm_id))
    ensure_covers(who, region, f"alarm {alarm_id}")
    now = now_utc()
    alarm = await controller.writer.call(lambda session: acknowledge(session, alarm_id, who.name, now))
    note = body.note if body else None
    await controller.record(who.audit("alarm.acknowledge", "alarm", alarm_id, region, note=note))
    return alarm
