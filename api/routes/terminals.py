"""Terminals: register them, list them with their presence."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import ControllerDep, SessionDep
from controller.terminals import TerminalSpec, list_terminals
from devices.messages import Heartbeat, RegionCode

router = APIRouter(prefix="/terminals", tags=["terminals"])


class TerminalPublic(BaseModel):
    id: str
    region: str
    kind: str
    name: str | None
    presence: str
    presence_since: datetime | None
    last_seen: datetime | None
    firmware: str | None
    telemetry: Heartbeat | None = Field(
        default=None, description="the last heartbeat, as the terminal sent it"
    )


class TerminalPage(BaseModel):
    items: list[TerminalPublic]
    total: int


class Registered(BaseModel):
    created: int
    updated: int


@router.get("", response_model=TerminalPage)
def terminals(
    session: SessionDep,
    controller: ControllerDep,
    region: Annotated[RegionCode | None, Query(description="only terminals within this region")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TerminalPage:
    """Registered terminals with their live presence (`unknown` while the controller is cut off)."""
    rows, total = list_terminals(session, region, limit, offset)
    items = []
    for row in rows:
        live = controller.presence.get(row.id)
        items.append(
            TerminalPublic(
                id=row.id,
                region=row.region_code,
                kind=row.kind,
                name=row.name,
                presence=controller.presence_of(row.id),
                presence_since=live.since if live else row.presence_since,
                last_seen=live.last_seen if live else None,
                firmware=row.firmware,
                telemetry=live.last_heartbeat if live else None,
            )
        )
    return TerminalPage(items=items, total=total)


@router.post("", response_model=Registered)
async def register(
    specs: Annotated[list[TerminalSpec], Field(min_length=1, max_length=20_000)], controller: ControllerDep
) -> Registered:
    """Register terminals, or move and rename known ones (idempotent)."""
    created, updated = await controller.register(specs)
    return Registered(created=created, updated=updated)
