"""A terminal's telemetry history: the samples kept from its heartbeats, for charts."""

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel

from api.auth import AUTH_RESPONSES, Problem, Viewer, ensure_covers
from api.deps import SessionDep
from controller.telemetry import telemetry_samples
from controller.terminals import in_service
from devices.messages import now_utc

router = APIRouter(prefix="/terminals", tags=["terminals"], responses=AUTH_RESPONSES)

DEFAULT_SPAN = timedelta(hours=24)


class TelemetryPoint(BaseModel):
    at: datetime
    signal_dbm: int | None
    temperature_c: float | None
    battery_pct: int | None
    supply: str | None
    volume: int | None


@router.get(
    "/{terminal_id}/telemetry",
    response_model=list[TelemetryPoint],
    responses={
        404: {"model": Problem, "description": "no such terminal in service"},
        422: {"model": Problem, "description": "a time without its zone, or a limit out of range"},
    },
)
def telemetry(
    terminal_id: str,
    who: Viewer,
    session: SessionDep,
    since: Annotated[AwareDatetime | None, Query(description="from this time (default: a day ago)")] = None,
    until: Annotated[AwareDatetime | None, Query(description="up to this time (default: now)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 2000,
) -> list[TelemetryPoint]:
    """The terminal's telemetry samples (at most one per `CUNXIANG_TELEMETRY_SAMPLE_S`, kept for
    `CUNXIANG_TELEMETRY_KEEP_DAYS`) from `since` to `until`: the latest `limit`, oldest first."""
    found = in_service(session, terminal_id)
    ensure_covers(who, found.region_code, f"terminal {terminal_id}")
    end = until or now_utc()
    rows = telemetry_samples(session, terminal_id, since or end - DEFAULT_SPAN, end, limit)
    return [TelemetryPoint.model_validate(row, from_attributes=True) for row in rows]
