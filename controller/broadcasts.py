"""Accepting a broadcast: the request, its target, the command it becomes, and its records.

A broadcast is persisted with one delivery row per targeted terminal, in one transaction, before
anything is published: once the API has answered 201, a crash cannot lose it. The target (regions,
groups, single terminals) is resolved to terminals then, once, and recorded with the broadcast.

An update (CAP's msgType Update) is a new broadcast that supersedes a live one: both records
change in the same transaction, and the update's command carries `supersedes`, so each terminal
ends the old message as it takes the new one.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import or_
from sqlmodel import Session, col, func, select

from controller.delivery import FINAL_STATES, UNCONFIRMED, DeliveryState
from controller.groups import GroupId
from controller.models import (
    NEVER_SENT,
    SENDING_STATES,
    Broadcast,
    BroadcastState,
    Delivery,
    Terminal,
    TerminalGroup,
)
from controller.regions import missing_regions
from controller.terminals import terminal_regions
from controller.writer import insert_rows
from devices.messages import (
    SUPERSEDES_MAX,
    AudioRef,
    BroadcastStatus,
    Cancel,
    Command,
    Content,
    RegionCode,
    TerminalId,
    encode,
    now_utc,
)
from devices.priority import BroadcastKind, EmergencyLevel, command_priority


class BroadcastRequest(BaseModel):
    """What an operator (or an upstream system) asks for. Exactly one of `expires_in`/`expires_at`."""

    model_config = ConfigDict(extra="forbid")

    kind: BroadcastKind
    level: EmergencyLevel | None = Field(
        default=None,
        description="emergencies only: 1 特别重大/red, 2 重大/orange, 3 较大/yellow, 4 一般/blue",
    )
    regions: Annotated[list[RegionCode], Field(max_length=500)] = []
    groups: Annotated[list[GroupId], Field(max_length=50)] = []
    terminals: Annotated[list[TerminalId], Field(max_length=10_000)] = []
    issuer_region: RegionCode | None = Field(
        default=None,
        description="the authority issuing it, the controller's region or one within it (default: the "
        "controller's region): sets its rank among equals; the target must lie within it",
    )
    text: Annotated[str, Field(min_length=1, max_length=4000)] | None = None
    language: str = "zh-CN"
    audio: AudioRef | None = None
    programme_id: Annotated[str, Field(min_length=1, max_length=32)] | None = Field(
        default=None,
        description="play a programme of the library (its audio, its text as the fallback) instead of "
        "giving text or audio",
    )
    expires_in: int | None = Field(default=None, description="seconds from now")
    expires_at: AwareDatetime | None = None
    volume: Annotated[int, Field(ge=0, le=100)] | None = None
    repeat: Annotated[int, Field(ge=1, le=10)] = 1
    status: BroadcastStatus = Field(
        default=BroadcastStatus.ACTUAL,
        description="actual, exercise (演练) or test (测试), as CAP's status. Terminals announce an exercise "
        "or test as such before playing it; neither ever waits for approval",
    )
    event: Annotated[str, Field(min_length=1, max_length=100)] | None = Field(
        default=None, description="what it is about, as CAP's event: 洪水, 台风, flood, typhoon"
    )
    confirmation: Annotated[str, Field(max_length=64)] | None = Field(
        default=None,
        description="an actual emergency sent by a person needs the `confirmation` that "
        "POST /api/v1/broadcasts/preview gave for this same request: proof its summary was shown",
    )

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if not (self.regions or self.groups or self.terminals):
            raise ValueError("the target is empty: give regions, groups or terminals")
        if self.kind is BroadcastKind.EMERGENCY and self.level is None:
            raise ValueError("an emergency broadcast needs a level: 1 (特别重大) to 4 (一般)")
        if self.kind is not BroadcastKind.EMERGENCY and self.level is not None:
            raise ValueError(f"a {self.kind.value} broadcast takes no level; levels are for emergencies")
        if self.programme_id is not None and (self.text is not None or self.audio is not None):
            raise ValueError("give a programme, or text and audio, not both")
        if self.text is None and self.audio is None and self.programme_id is None:
            raise ValueError("content is missing: give text to speak, audio, both, or a programme")
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
    request: BroadcastRequest,
    *,
    broadcast_id: str,
    county_region: str,
    now: datetime,
    max_expires_in: int,
    supersedes: list[str] | None = None,
    not_before: datetime | None = None,
) -> Command:
    issuer_region = request.issuer_region or county_region
    if not issuer_region.startswith(county_region):
        raise BroadcastRejected(f"issuer region {issuer_region} is outside this controller's {county_region}")
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
        issued_at=max(now, not_before) if not_before is not None else now,
        expires_at=expires_at,
        content=Content(text=request.text, language=request.language, audio=request.audio),
        volume=request.volume,
        repeat=request.repeat,
        supersedes=supersedes,
        status=request.status,
    )


@dataclass(frozen=True)
class Target:
    """A request's target resolved: what to publish to, and every terminal it reaches."""

    regions: list[str]
    """region topics to publish on, none inside another"""
    terminals: list[str]
    """terminals addressed one by one: those not inside any of `regions`"""
    reached: dict[str, str]
    """every terminal reached → its region"""


def resolve_target(session: Session, request: BroadcastRequest, issuer_region: str) -> Target:
    """The request's regions, groups and terminals as terminals; raises BroadcastRejected.

    The target must lie within the issuer's region: a township cannot reach the next township,
    and a county controller cannot reach the next county.
    """
    query = select(TerminalGroup).where(col(TerminalGroup.id).in_(request.groups))
    groups = list(session.exec(query).all())
    unknown = sorted(set(request.groups) - {g.id for g in groups})
    if unknown:
        raise BroadcastRejected(f"unknown group(s): {', '.join(unknown)}")
    regions = set(request.regions).union(*(g.regions for g in groups))
    unknown = missing_regions(
        session, regions | ({request.issuer_region} if request.issuer_region else set())
    )
    if unknown:
        raise BroadcastRejected(f"unknown region code(s): {', '.join(unknown)}")
    # A group's terminal removed since is skipped: a stale group must not hold back an alert.
    addressed = terminal_regions(
        session, sorted(set(request.terminals).union(*(g.terminals for g in groups)))
    )
    unknown = [t for t in request.terminals if t not in addressed]
    if unknown:
        raise BroadcastRejected(f"unknown terminal(s): {', '.join(unknown[:20])}")
    outside = sorted(r for r in regions | set(addressed.values()) if not r.startswith(issuer_region))
    if outside:
        raise BroadcastRejected(
            f"the target reaches outside the issuer's region {issuer_region}: {', '.join(outside[:20])}"
        )
    topics = sorted(r for r in regions if not any(r != o and r.startswith(o) for o in regions))
    reached = resolve_terminals(session, topics)
    singles = sorted(t for t in addressed if t not in reached)
    reached.update(addressed)
    return Target(regions=topics, terminals=singles, reached=reached)


def resolve_terminals(session: Session, regions: list[str]) -> dict[str, str]:
    """Every terminal in service within any of `regions` (codes nest by prefix): id → its region."""
    if not regions:
        return {}
    condition = or_(*(col(Terminal.region_code).startswith(code) for code in regions))
    query = select(Terminal.id, Terminal.region_code).where(
        condition, col(Terminal.decommissioned_at).is_(None)
    )
    rows = session.exec(query).all()
    return dict(rows)


@dataclass(frozen=True)
class Provenance:
    """Who asked for a broadcast, and what it answers."""

    created_by: str | None = None
    correction_of: str | None = None
    """the broadcast it declares a false alarm"""
    approval_deadline: datetime | None = None
    """set: hold it for approval until then instead of sending it"""
    held: Broadcast | None = None
    """the held broadcast this approval turns into a live one"""
    decided_by: str | None = None


def accept(
    session: Session,
    request: BroadcastRequest,
    command: Command,
    updates: Broadcast | None = None,
    not_before: datetime | None = None,
    provenance: Provenance = Provenance(),
) -> tuple[Broadcast, Target]:
    """Resolve the target, then store the broadcast and a pending delivery per terminal, atomically.

    With `updates`, also mark that broadcast superseded by this one, in the same transaction. With
    an approval deadline, store it awaiting approval instead, with no deliveries: its target is
    resolved again, and its command built afresh, when it is approved.
    """
    target = resolve_target(session, request, command.issuer_region)
    if provenance.approval_deadline is not None:
        held = _broadcast(request, command, target, updates, not_before, provenance)
        held.state = BroadcastState.AWAITING_APPROVAL
        held.request = request.model_dump_json(exclude={"confirmation"})
        held.approval_deadline = provenance.approval_deadline
        session.add(held)
        session.commit()
        return held, target
    if command.supersedes:
        rows = session.exec(
            select(Delivery.terminal_id, Delivery.state, Broadcast.kind)
            .join(Broadcast)
            .where(col(Delivery.broadcast_id).in_(command.supersedes))
        ).all()
        left_out = sorted(
            {t for t, state, kind in rows if _still_reached(state, kind)} - target.reached.keys()
        )
        if left_out:
            raise BroadcastRejected(
                f"an update must reach every terminal the broadcast it updates still reaches (the same "
                f"target or wider); {len(left_out)} terminal(s) would keep the old message, e.g. "
                f"{', '.join(left_out[:5])}. Cancel it and send a new broadcast instead"
            )
    broadcast = _broadcast(request, command, target, updates, not_before, provenance)
    if provenance.held is not None:
        broadcast.request = None
        broadcast.decided_by, broadcast.decided_at = provenance.decided_by, command.issued_at
    session.add(broadcast)
    if updates is not None:
        updates.superseded_by = command.id
        if updates.state in SENDING_STATES:
            updates.state = BroadcastState.SUPERSEDED
        session.add(updates)
    session.flush()
    if target.reached:
        insert_rows(
            session.connection(),
            Delivery.__table__,  # type: ignore[attr-defined]
            [
                {
                    "broadcast_id": command.id,
                    "terminal_id": terminal_id,
                    "region_code": region,
                    "state": DeliveryState.PENDING.value,
                    "updated_at": command.issued_at,
                }
                for terminal_id, region in target.reached.items()
            ],
        )
    session.commit()
    return broadcast, target


def _broadcast(
    request: BroadcastRequest,
    command: Command,
    target: Target,
    updates: Broadcast | None,
    not_before: datetime | None,
    provenance: Provenance,
) -> Broadcast:
    """The broadcast's record: a new one, or the held one now approved, filled in from the command."""
    values: dict[str, Any] = {
        "kind": command.kind.value,
        "level": int(command.level) if command.level is not None else None,
        "issuer_region": command.issuer_region,
        "regions": target.regions,
        "groups": sorted(set(request.groups)) or None,
        "terminal_ids": target.terminals or None,
        "supersedes": updates.id if updates is not None else None,
        "not_before": not_before,
        "text": request.text,
        "event": request.event,
        "status": command.status.value,
        "priority": command.priority,
        "issued_at": command.issued_at,
        "expires_at": command.expires_at,
        "state": BroadcastState.ACCEPTED,
        "terminals": len(target.reached),
        "command": encode(command).decode(),
    }
    if provenance.held is None:
        return Broadcast(
            id=command.id, created_by=provenance.created_by, correction_of=provenance.correction_of, **values
        )
    for name, value in values.items():
        setattr(provenance.held, name, value)
    return provenance.held


def _still_reached(state: str, kind: str) -> bool:
    """Whether a delivery is not over: the terminal may still play, or resume, the broadcast."""
    return state not in FINAL_STATES or (state == DeliveryState.PREEMPTED and kind == BroadcastKind.PROGRAMME)


def open_lineage(session: Session, broadcast: Broadcast) -> list[Broadcast]:
    """`broadcast` if it is going out, and the broadcasts it superseded (directly or through earlier
    updates) that still wait to hear from terminals: what an update of it must end, or a cancel of
    it must cancel too, for terminals that missed an update in between. Newest first."""
    chain = [broadcast] if broadcast.state in SENDING_STATES else []
    earlier = broadcast
    for _ in range(SUPERSEDES_MAX - 1):
        if earlier.supersedes is None:
            break
        parent = session.get(Broadcast, earlier.supersedes)
        if parent is None or parent.state != BroadcastState.SUPERSEDED:
            break
        if parent.finished_at is None:
            chain.append(parent)
        earlier = parent
    return chain


def updatable(session: Session, broadcast_id: str) -> Broadcast:
    """The broadcast an update is for; raises BroadcastNotFound, or BroadcastConflict when it was
    cancelled or already updated."""
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:
        raise BroadcastNotFound(f"no broadcast {broadcast_id!r}")
    if broadcast.state in (BroadcastState.CANCELLING, BroadcastState.CANCELLED):
        raise BroadcastConflict(
            f"broadcast {broadcast_id} was cancelled; an update cannot bring it back: send a new broadcast"
        )
    if broadcast.superseded_by is not None:
        raise BroadcastConflict(
            f"broadcast {broadcast_id} was already updated by {broadcast.superseded_by}; update that one"
        )
    if broadcast.state in NEVER_SENT:
        raise BroadcastConflict(f"broadcast {broadcast_id} was never sent ({broadcast.state})")
    if broadcast.state == BroadcastState.AWAITING_APPROVAL:
        raise BroadcastConflict(
            f"broadcast {broadcast_id} is awaiting approval; cancel it and send the new one instead"
        )
    return broadcast


def created_since(session: Session, by: str, since: datetime) -> int:
    """How many broadcasts `by` (an account, an API key, a feed) created since then: its rate."""
    return session.exec(
        select(func.count())
        .select_from(Broadcast)
        .where(Broadcast.created_by == by, col(Broadcast.issued_at) >= since)
    ).one()


def head_of(session: Session, broadcast_id: str) -> Broadcast | None:
    """The newest of a broadcast's updates (itself if it was never updated)."""
    broadcast = session.get(Broadcast, broadcast_id)
    seen: set[str] = set()
    while broadcast is not None and broadcast.superseded_by is not None and broadcast.id not in seen:
        seen.add(broadcast.id)
        newer = session.get(Broadcast, broadcast.superseded_by)
        if newer is None:
            break
        broadcast = newer
    return broadcast


def live_broadcasts(session: Session) -> list[tuple[Broadcast, dict[str, DeliveryState], set[str]]]:
    """Broadcasts not yet over, with their delivery states and the terminals still owed a cancel,
    for a controller that (re)starts."""
    live = or_(
        col(Broadcast.state).in_([*SENDING_STATES, BroadcastState.CANCELLING]),
        (col(Broadcast.state) == BroadcastState.SUPERSEDED) & col(Broadcast.finished_at).is_(None),
    )
    broadcasts = session.exec(select(Broadcast).where(live)).all()
    states: dict[str, dict[str, DeliveryState]] = {b.id: {} for b in broadcasts}
    owed: dict[str, set[str]] = {b.id: set() for b in broadcasts}
    rows = session.exec(
        select(Delivery.broadcast_id, Delivery.terminal_id, Delivery.state, Delivery.reason)
        .join(Broadcast)
        .where(live)
    ).all()
    for broadcast_id, terminal_id, state, reason in rows:
        states[broadcast_id][terminal_id] = DeliveryState(state)
        if state == DeliveryState.CANCELLED and reason == UNCONFIRMED:
            owed[broadcast_id].add(terminal_id)
    return [(broadcast, states[broadcast.id], owed[broadcast.id]) for broadcast in broadcasts]


def record_cancel(
    session: Session, broadcast_id: str, new_cancel: Callable[[str], Cancel]
) -> list[tuple[Broadcast, Cancel | None]]:
    """Store that the broadcast is being cancelled, with the exact cancel payload to send, and the
    same for the broadcasts it superseded that are still open (a terminal that missed the update
    must not go on playing the older message). `new_cancel(id)` makes the cancel of one. One
    awaiting approval is withdrawn: cancelled with no cancel to send (None)."""
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:
        raise BroadcastNotFound(f"no broadcast {broadcast_id!r}")
    if broadcast.state == BroadcastState.SUPERSEDED:
        raise BroadcastConflict(
            f"broadcast {broadcast_id} was replaced by its update {broadcast.superseded_by}; cancel that one"
        )
    if broadcast.state == BroadcastState.AWAITING_APPROVAL:
        # Never sent: withdrawn, with nothing to tell terminals.
        broadcast.state = BroadcastState.CANCELLED
        broadcast.finished_at = now_utc()
        session.add(broadcast)
        session.commit()
        return [(broadcast, None)]
    if broadcast.state not in SENDING_STATES:
        raise BroadcastConflict(f"broadcast {broadcast_id} is {broadcast.state}; there is nothing to cancel")
    cancelled: list[tuple[Broadcast, Cancel | None]] = []
    for each in open_lineage(session, broadcast):
        cancel = new_cancel(each.id)
        each.state = BroadcastState.CANCELLING
        each.cancel_command = encode(cancel).decode()
        session.add(each)
        cancelled.append((each, cancel))
    session.commit()
    return cancelled
