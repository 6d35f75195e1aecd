"""What an operator sees of a broadcast: totals per state, per region below the target, and who is silent."""

from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select as select_columns
from sqlmodel import Session, col, select

from controller.delivery import UNACKNOWLEDGED_STATES, DeliveryState
from controller.models import Broadcast, Delivery, Terminal
from controller.regions import region_names
from devices.identifiers import child_code_length


def zero_counts() -> dict[str, int]:
    return {state.value: 0 for state in DeliveryState}


class RegionTotals(BaseModel):
    code: str
    name: str | None
    terminals: int
    counts: dict[str, int]


class SilentTerminal(BaseModel):
    """A terminal that has not acknowledged, with what we know of why."""

    id: str
    region: str
    state: str
    presence: str
    why: str


class BroadcastReport(BaseModel):
    id: str
    state: str
    kind: str
    level: int | None
    regions: list[str]
    text: str | None
    issued_at: datetime
    expires_at: datetime
    finished_at: datetime | None
    terminals: int
    counts: dict[str, int]
    by_region: list[RegionTotals]
    unacknowledged: list[SilentTerminal]
    failures: list[SilentTerminal]


_WHY_BY_PRESENCE = {
    "offline": "terminal is offline (said goodbye)",
    "lost": "terminal connection lost (broker published its will)",
    "unknown": "terminal has never connected",
    "online": "terminal is online but has not answered",
}


_WHY_CUT_OFF = "controller is cut off from the MQTT broker; the terminal's state is unknown"


def _bucket(region_code: str, targets: list[str]) -> str:
    """The region one level below the target that a terminal's region falls in."""
    for target in targets:
        if region_code.startswith(target):
            length = child_code_length(target)
            return region_code[:length] if length and len(region_code) >= length else target
    return region_code


def broadcast_report(
    session: Session,
    broadcast_id: str,
    presence_of: Callable[[str], str] | None = None,
    controller_connected: bool = True,
) -> BroadcastReport | None:
    """The report of one broadcast; `presence_of` gives the live presence (else the stored one).

    While the controller itself is cut off from the broker it cannot know who is online, and the
    report says so instead of blaming the terminals.
    """
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:
        return None
    rows = session.execute(
        select_columns(
            col(Delivery.terminal_id),
            col(Delivery.region_code),
            col(Delivery.state),
            col(Delivery.reason),
            col(Delivery.detail),
            col(Delivery.by_command),
        )
        .where(col(Delivery.broadcast_id) == broadcast_id)
        .order_by(Delivery.terminal_id)
    ).all()
    counts = zero_counts()
    buckets: dict[str, dict[str, int]] = {}
    silent_ids: list[str] = []
    failures: list[SilentTerminal] = []
    for terminal_id, region, state, reason, detail, by_command in rows:
        counts[state] += 1
        bucket = buckets.setdefault(_bucket(region, broadcast.regions), zero_counts())
        bucket[state] += 1
        if state in UNACKNOWLEDGED_STATES or (state == DeliveryState.EXPIRED and reason is None):
            silent_ids.append(terminal_id)
        elif state in (DeliveryState.REJECTED, DeliveryState.FAILED, DeliveryState.PREEMPTED):
            why = (
                (reason or state)
                + (f": {detail}" if detail else "")
                + (f" (by {by_command})" if by_command else "")
            )
            failures.append(SilentTerminal(id=terminal_id, region=region, state=state, presence="", why=why))
    if presence_of is None:
        stored = _stored_presence(session, silent_ids + [f.id for f in failures])

        def presence_of(terminal_id: str) -> str:
            return stored.get(terminal_id, "unknown")

    regions_of = {terminal_id: region for terminal_id, region, *_ in rows}
    states_of = {terminal_id: state for terminal_id, _, state, *_ in rows}
    unacknowledged = []
    for terminal_id in silent_ids:
        presence = presence_of(terminal_id)
        unacknowledged.append(
            SilentTerminal(
                id=terminal_id,
                region=regions_of[terminal_id],
                state=states_of[terminal_id],
                presence=presence,
                why=_WHY_BY_PRESENCE.get(presence, presence) if controller_connected else _WHY_CUT_OFF,
            )
        )
    for failure in failures:
        failure.presence = presence_of(failure.id)
    names = region_names(session, buckets)
    return BroadcastReport(
        id=broadcast.id,
        state=broadcast.state,
        kind=broadcast.kind,
        level=broadcast.level,
        regions=broadcast.regions,
        text=broadcast.text,
        issued_at=broadcast.issued_at,
        expires_at=broadcast.expires_at,
        finished_at=broadcast.finished_at,
        terminals=broadcast.terminals,
        counts=counts,
        by_region=[
            RegionTotals(code=code, name=names.get(code), terminals=sum(c.values()), counts=c)
            for code, c in sorted(buckets.items())
        ],
        unacknowledged=unacknowledged,
        failures=failures,
    )


def _stored_presence(session: Session, terminal_ids: list[str]) -> dict[str, str]:
    if not terminal_ids:
        return {}
    rows = session.exec(
        select(Terminal.id, Terminal.presence).where(col(Terminal.id).in_(terminal_ids))
    ).all()
    return dict(rows)
