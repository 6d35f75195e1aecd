"""Terminal fault alarms: list them, acknowledge them."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api.deps import ControllerDep, SessionDep
from controller.alarms import acknowledge
from controller.models import Alarm, Terminal
from devices.messages import RegionCode, now_utc

router = APIRouter(prefix="/alarms", tags=["alarms"])


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
    by: Annotated[str, Field(min_length=1, max_length=100, description="who has seen it")]


@router.get("", response_model=list[AlarmPublic])
def alarms(
    session: SessionDep,
    active: Annotated[
        bool | None, Query(description="only open (true) or only cleared (false) alarms")
    ] = None,
    region: Annotated[RegionCode | None, Query(description="only terminals within this region")] = None,
    terminal: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> list[Alarm]:
    """Alarms, newest first."""
    query = select(Alarm)
    if active is not None:
        query = query.where(col(Alarm.ended_at).is_(None) if active else col(Alarm.ended_at).is_not(None))
    if terminal is not None:
        query = query.where(Alarm.terminal_id == terminal)
    if region is not None:
        query = query.join(Terminal, col(Terminal.id) == col(Alarm.terminal_id)).where(
            col(Terminal.region_code).startswith(region)
        )
    return list(session.exec(query.order_by(col(Alarm.started_at).desc()).limit(limit)).all())


@router.post("/{alarm_id}/acknowledge", response_model=AlarmPublic)
async def acknowledge_alarm(alarm_id: str, body: Acknowledgement, controller: ControllerDep) -> Alarm:
    """Record that an operator has seen the alarm; it stays open until the fault clears. 404 if unknown."""
    now = now_utc()
    return await controller.writer.call(lambda session: acknowledge(session, alarm_id, body.by, now))
