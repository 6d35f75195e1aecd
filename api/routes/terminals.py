"""Terminals: register them (JSON or CSV), their credentials, take them out of service, see them."""

from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, status
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from api.auth import AUTH_RESPONSES, UNREADABLE, Admin, Problem, Responses, Viewer, ensure_covers
from api.deps import ControllerDep, SessionDep, read
from api.routes.alarms import AlarmPublic
from controller.accounts import Principal
from controller.models import Alarm, Broadcast, Delivery, PresenceEvent, Terminal
from controller.service import Controller
from controller.terminals import (
    Credentials,
    Registration,
    TerminalSpec,
    in_service,
    list_terminals,
    parse_terminals_csv,
    terminal_regions,
)
from devices.messages import Heartbeat, RegionCode

router = APIRouter(prefix="/terminals", tags=["terminals"], responses=AUTH_RESPONSES)
_UNKNOWN: Responses = {404: {"model": Problem, "description": "no such terminal in service"}}
_INVALID: Responses = {**UNREADABLE, 422: {"model": Problem, "description": "what is wrong, line by line"}}
PresenceFilter = Literal["online", "offline", "lost", "unknown"]


class TerminalPublic(BaseModel):
    id: str
    region: str
    kind: str
    name: str | None
    latitude: float | None
    longitude: float | None
    installed_on: date | None
    notes: str | None
    presence: str
    flapping: bool
    presence_since: datetime | None
    last_seen: datetime | None
    firmware: str | None
    credentials_issued_at: datetime | None
    telemetry: Heartbeat | None = Field(
        default=None, description="the last heartbeat, as the terminal sent it"
    )


class TerminalPage(BaseModel):
    items: list[TerminalPublic]
    total: int


class CredentialsPublic(BaseModel):
    terminal_id: str
    username: str
    secret: str = Field(description="shown this once; only a hash is kept")


class Registered(BaseModel):
    created: int
    updated: int
    credentials: list[CredentialsPublic] = Field(
        description="for each terminal new or back in service: its MQTT username and secret, shown once"
    )


class PlayedBroadcast(BaseModel):
    broadcast_id: str
    kind: str
    level: int | None
    text: str | None
    issued_at: datetime
    state: str
    reason: str | None
    finished_at: datetime | None


class PresenceChange(BaseModel):
    at: datetime
    presence: str
    reason: str


class TerminalDetail(TerminalPublic):
    presence_history: list[PresenceChange] = Field(description="its last presence changes, newest first")
    alarms: list[AlarmPublic] = Field(description="its open alarms, then the last cleared ones, newest first")
    broadcasts: list[PlayedBroadcast] = Field(
        description="its last broadcasts, newest first, and how each went"
    )


class UnregisteredTerminal(BaseModel):
    terminal_id: str
    last_seen: datetime
    region: str | None = Field(description="the region its status message claimed, if it sent one")
    messages: int


def public(terminal: Terminal, controller: Controller) -> TerminalPublic:
    live = controller.presence.get(terminal.id)
    return TerminalPublic(
        id=terminal.id,
        region=terminal.region_code,
        kind=terminal.kind,
        name=terminal.name,
        latitude=terminal.latitude,
        longitude=terminal.longitude,
        installed_on=terminal.installed_on,
        notes=terminal.notes,
        presence=controller.presence_of(terminal.id),
        flapping=live.flapping if live else False,
        presence_since=live.since if live else terminal.presence_since,
        last_seen=live.last_seen if live else None,
        firmware=terminal.firmware,
        credentials_issued_at=terminal.credentials_issued_at,
        telemetry=live.last_heartbeat if live else None,
    )


@router.get("", response_model=TerminalPage)
def terminals(
    who: Viewer,
    session: SessionDep,
    controller: ControllerDep,
    region: Annotated[RegionCode | None, Query(description="only terminals within this region")] = None,
    presence: Annotated[PresenceFilter | None, Query(description="only terminals with this presence")] = None,
    fault: Annotated[
        bool | None, Query(description="only terminals with (true) or without an open alarm")
    ] = None,
    kind: Annotated[str | None, Query(description="only terminals of this kind", max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TerminalPage:
    """Terminals in service within your region (or `region`, within yours) with their live presence
    (`unknown` while the controller is cut off); `total` counts all that match the filters."""
    ensure_covers(who, region or who.region, "the region asked for")
    rows, total = list_terminals(
        session, region or who.region, limit, offset, kind, _matching(controller, presence, fault)
    )
    return TerminalPage(items=[public(row, controller) for row in rows], total=total)


def _matching(
    controller: Controller, presence: str | None, fault: bool | None
) -> Callable[[Terminal], bool] | None:
    if presence is None and fault is None:
        return None

    def keep(terminal: Terminal) -> bool:
        if presence is not None and controller.presence_of(terminal.id) != presence:
            return False
        return fault is None or bool(controller.alarms.active(terminal.id)) == fault

    return keep


def _registered(registration: Registration) -> Registered:
    return Registered(
        created=registration.created,
        updated=registration.updated,
        credentials=[CredentialsPublic(**vars(c)) for c in registration.credentials],
    )


@router.post("", response_model=Registered, responses=_INVALID)
async def register(
    specs: Annotated[list[TerminalSpec], Field(min_length=1, max_length=20_000)],
    who: Admin,
    controller: ControllerDep,
) -> Registered:
    """Register terminals within your region, or update the description of known ones (idempotent)."""
    return await _register(who, controller, specs, "terminal.register")


@router.post("/import", response_model=Registered, responses=_INVALID)
async def import_csv(
    who: Admin,
    controller: ControllerDep,
    text: Annotated[
        str,
        Body(
            media_type="text/csv",
            description="a header row naming id, region and any of kind, name, latitude, longitude, "
            "installed_on (YYYY-MM-DD), notes; then one terminal per line",
        ),
    ],
) -> Registered:
    """Register terminals from CSV; every bad line is named (422) and then nothing is registered."""
    return await _register(who, controller, parse_terminals_csv(text), "terminal.import")


async def _register(
    who: Principal, controller: Controller, specs: list[TerminalSpec], action: str
) -> Registered:
    ensure_covers(who, [spec.region for spec in specs], "a terminal's region")
    known = await read(controller, lambda session: terminal_regions(session, [spec.id for spec in specs]))
    ensure_covers(who, list(known.values()), "a terminal already registered")
    registration = await controller.register(specs)
    await controller.record(
        who.audit(
            action,
            "terminal",
            specs[0].id if len(specs) == 1 else None,
            who.region,
            created=registration.created,
            updated=registration.updated,
            terminals=[spec.id for spec in specs[:100]],
        )
    )
    return _registered(registration)


@router.get("/unregistered", response_model=list[UnregisteredTerminal])
def unregistered(who: Admin, controller: ControllerDep) -> list[UnregisteredTerminal]:
    """Terminal ids heard on the broker (status or heartbeats) that are not registered or not in
    service: switched on before registration, misconfigured, or impostors. Latest first. Those
    claiming a region within yours; those claiming none only to administrators of the county."""
    whole_county = who.covers(controller.settings.county_region)
    return [
        UnregisteredTerminal(**s._asdict())
        for s in controller.presence.strangers()
        if (who.covers(s.region) if s.region else whole_county)
    ]


@router.get("/{terminal_id}", response_model=TerminalDetail, responses=_UNKNOWN)
def terminal(
    terminal_id: str,
    who: Viewer,
    session: SessionDep,
    controller: ControllerDep,
    history: Annotated[int, Query(ge=0, le=1000)] = 50,
    broadcasts: Annotated[int, Query(ge=0, le=500)] = 20,
) -> TerminalDetail:
    """A terminal's description, presence and its history, last telemetry, alarms, last broadcasts."""
    found = in_service(session, terminal_id)
    ensure_covers(who, found.region_code, f"terminal {terminal_id}")
    changes = session.exec(
        select(PresenceEvent)
        .where(PresenceEvent.terminal_id == terminal_id)
        .order_by(col(PresenceEvent.at).desc(), col(PresenceEvent.id).desc())
        .limit(history)
    ).all()
    alarms = session.exec(
        select(Alarm)
        .where(Alarm.terminal_id == terminal_id)
        .order_by(col(Alarm.ended_at).is_not(None), col(Alarm.started_at).desc())
        .limit(100)
    ).all()
    return TerminalDetail(
        **public(found, controller).model_dump(),
        presence_history=[PresenceChange(at=c.at, presence=c.presence, reason=c.reason) for c in changes],
        alarms=[AlarmPublic.model_validate(a, from_attributes=True) for a in alarms],
        broadcasts=_last_broadcasts(session, terminal_id, broadcasts),
    )


@router.post("/{terminal_id}/credentials", response_model=CredentialsPublic, responses=_UNKNOWN)
async def new_credentials(terminal_id: str, who: Admin, controller: ControllerDep) -> Credentials:
    """A new MQTT secret for the terminal, shown once (the old one is no longer valid)."""
    region = await _terminal_region(who, controller, terminal_id)
    credentials = await controller.reissue_credentials(terminal_id)
    await controller.record(who.audit("terminal.credentials", "terminal", terminal_id, region))
    return credentials


@router.delete("/{terminal_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_UNKNOWN)
async def decommission(terminal_id: str, who: Admin, controller: ControllerDep) -> None:
    """Take the terminal out of service: no longer targeted, tracked or given broker access. Its
    deliveries stay in every report. Registering it again brings it back, with new credentials."""
    region = await _terminal_region(who, controller, terminal_id)
    await controller.decommission(terminal_id)
    await controller.record(who.audit("terminal.decommission", "terminal", terminal_id, region))


async def _terminal_region(who: Principal, controller: Controller, terminal_id: str) -> str:
    found = await read(controller, lambda session: in_service(session, terminal_id))
    ensure_covers(who, found.region_code, f"terminal {terminal_id}")
    return found.region_code


def _last_broadcasts(session: Session, terminal_id: str, limit: int) -> list[PlayedBroadcast]:
    rows = session.exec(
        select(Delivery, Broadcast)
        .join(Broadcast)
        .where(Delivery.terminal_id == terminal_id)
        .order_by(col(Broadcast.issued_at).desc())
        .limit(limit)
    ).all()
    return [
        PlayedBroadcast(
            broadcast_id=broadcast.id,
            kind=broadcast.kind,
            level=broadcast.level,
            text=broadcast.text,
            issued_at=broadcast.issued_at,
            state=delivery.state,
            reason=delivery.reason,
            finished_at=delivery.finished_at,
        )
        for delivery, broadcast in rows
    ]
