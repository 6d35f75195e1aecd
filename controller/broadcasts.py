"""Accepting a broadcast: the request, its validation, the command it becomes, and its records.

A broadcast is persisted with one delivery row per targeted terminal, in one transaction, before
anything is published: once the API has answered 201, a crash cannot lose it.
"""

import secrets
from datetime import datetime, timedelta
from typing import Annotated, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import insert, or_
from sqlmodel import Session, col, select

from controller.delivery import UNCONFIRMED, DeliveryState
from controller.models import Broadcast, BroadcastState, Delivery, Terminal
from controller.regions import missing_regions
from devices.messages import AudioRef, Cancel, Command, Content, RegionCode, encode
from devices.priority import BroadcastKind, EmergencyLevel, command_priority


class BroadcastRequest(BaseModel):
    """What an operator (or an upstream system) asks for. Exactly one of `expires_in`/`expires_at`."""

    model_config = ConfigDict(extra="forbid")

    kind: BroadcastKind
    level: EmergencyLevel | None = Field(
        default=None,
        description="emergencies only: 1 特别重大/red, 2 重大/orange, 3 较大/yellow, 4 一般/blue",
    )
    regions: Annotated[list[RegionCode], Field(min_length=1, max_length=500)]
    text: Annotated[str, Field(min_length=1, max_length=4000)] | None = None
    language: str = "zh-CN"
    audio: AudioRef | None = None
    expires_in: int | None = Field(default=None, description="seconds from now")
    expires_at: AwareDatetime | None = None
    volume: Annotated[int, Field(ge=0, le=100)] | None = None
    repeat: Annotated[int, Field(ge=1, le=10)] = 1

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if self.kind is BroadcastKind.EMERGENCY and self.level is None:
            raise ValueError("an emergency broadcast needs a level: 1 (特别重大) to 4 (一般)")
        if self.kind is not BroadcastKind.EMERGENCY and self.level is not None:
            raise ValueError(f"a {self.kind.value} broadcast takes no level; levels are for emergencies")
        if self.text is None and self.audio is None:
            raise ValueError("content is missing: give text to speak, audio, or both")
        if (self.expires_in is None) == (self.expires_at is None):
            raise ValueError("give exactly one of expires_in (seconds) or expires_at (ISO 8601 time)")
        if self.expires_in is not None and self.expires_in <= 0:
            raise ValueError("expires_in must be a positive number of seconds")
        return self


class BroadcastRejected(ValueError):
    """A request that is well-formed but cannot be carried out (unknown region, expiry passed)."""


class BroadcastNotFound(LookupError):
    """No broadcast with that id."""


class BroadcastConflict(ValueError):
    """The request does not fit the broadcast's state (cancelling one that is over)."""


def new_broadcast_id(now: datetime) -> str:
    """Sortable by time and unguessable: 20261127T130455-1f3a9c0d2b7e."""
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(6)}"


def build_command(
    request: BroadcastRequest, *, broadcast_id: str, issuer_region: str, now: datetime, max_expires_in: int
) -> Command:
    if request.expires_in is not None and request.expires_in > max_expires_in:
        raise BroadcastRejected(f"the expiry is more than {max_expires_in} s away")
    expires_at = request.expires_at or now + timedelta(seconds=request.expires_in or 0)
    if expires_at <= now:
        raise BroadcastRejected(f"the expiry {expires_at.isoformat()} is in the past")
    if expires_at - now > timedelta(seconds=max_expires_in):
        raise BroadcastRejected(f"the expiry is more than {max_expires_in} s away")
    return Command(
        id=broadcast_id,
        kind=request.kind,
        level=request.level,
        issuer_region=issuer_region,
        priority=command_priority(request.kind, request.level, issuer_region),
        issued_at=now,
        expires_at=expires_at,
        content=Content(text=request.text, language=request.language, audio=request.audio),
        volume=request.volume,
        repeat=request.repeat,
    )


def resolve_terminals(session: Session, regions: list[str]) -> dict[str, str]:
    """Every registered terminal within any of `regions` (codes nest by prefix): id → its region."""
    condition = or_(*(col(Terminal.region_code).startswith(code) for code in regions))
    rows = session.exec(select(Terminal.id, Terminal.region_code).where(condition)).all()
    return dict(rows)


def accept(session: Session, request: BroadcastRequest, command: Command) -> tuple[Broadcast, dict[str, str]]:
    """Check the target, then store the broadcast and a pending delivery per terminal, atomically."""
    unknown = missing_regions(session, request.regions)
    if unknown:
        raise BroadcastRejected(f"unknown region code(s): {', '.join(unknown)}")
    terminals = resolve_terminals(session, request.regions)
    broadcast = Broadcast(
        id=command.id,
        kind=command.kind.value,
        level=int(command.level) if command.level is not None else None,
        issuer_region=command.issuer_region,
        regions=sorted(set(request.regions)),
        text=request.text,
        priority=command.priority,
        issued_at=command.issued_at,
        expires_at=command.expires_at,
        state=BroadcastState.ACCEPTED,
        terminals=len(terminals),
        command=encode(command).decode(),
    )
    session.add(broadcast)
    session.flush()
    if terminals:
        session.execute(
            insert(Delivery),
            [
                {
                    "broadcast_id": command.id,
                    "terminal_id": terminal_id,
                    "region_code": region,
                    "state": DeliveryState.PENDING.value,
                    "updated_at": command.issued_at,
                }
                for terminal_id, region in terminals.items()
            ],
        )
    session.commit()
    return broadcast, terminals


def live_broadcasts(session: Session) -> list[tuple[Broadcast, dict[str, DeliveryState], set[str]]]:
    """Broadcasts not yet over, with their delivery states and the terminals still owed a cancel,
    for a controller that (re)starts."""
    live = [BroadcastState.ACCEPTED, BroadcastState.ACTIVE, BroadcastState.CANCELLING]
    broadcasts = session.exec(select(Broadcast).where(col(Broadcast.state).in_(live))).all()
    states: dict[str, dict[str, DeliveryState]] = {b.id: {} for b in broadcasts}
    owed: dict[str, set[str]] = {b.id: set() for b in broadcasts}
    rows = session.exec(
        select(Delivery.broadcast_id, Delivery.terminal_id, Delivery.state, Delivery.reason)
        .join(Broadcast)
        .where(col(Broadcast.state).in_(live))
    ).all()
    for broadcast_id, terminal_id, state, reason in rows:
        states[broadcast_id][terminal_id] = DeliveryState(state)
        if state == DeliveryState.CANCELLED and reason == UNCONFIRMED:
            owed[broadcast_id].add(terminal_id)
    return [(broadcast, states[broadcast.id], owed[broadcast.id]) for broadcast in broadcasts]


def record_cancel(session: Session, broadcast_id: str, cancel: Cancel) -> Broadcast:
    """Store that the broadcast is being cancelled, with the exact cancel payload to send."""
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:
        raise BroadcastNotFound(f"no broadcast {broadcast_id!r}")
    if broadcast.state not in (BroadcastState.ACCEPTED, BroadcastState.ACTIVE):
        raise BroadcastConflict(f"broadcast {broadcast_id} is {broadcast.state}; there is nothing to cancel")
    broadcast.state = BroadcastState.CANCELLING
    broadcast.cancel_command = encode(cancel).decode()
    session.add(broadcast)
    session.commit()
    return broadcast
