"""What an operator sees of a broadcast: totals per state, per region below the target, and who is silent."""

from collections.abc import Callable, Iterable
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
    unacknowledged_total: int
    unacknowledged: list[SilentTerminal]
    failures_total: int
    failures: list[SilentTerminal]


_WHY_BY_PRESENCE = {
    "offline": "terminal is offline (said goodbye)",
    "lost": "terminal connection lost (broker published its will)",
    "unknown": "terminal has never connected",
    "online": "terminal is online but has not answered",
}


_WHY_CUT_OFF = "controller is cut off from the MQTT broker; the terminal's state is unknown"


def tally(
    deliveries: Iterable[tuple[str, str]], targets: list[str]
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Counts per delivery state, overall and per region one level below the targets.

    `deliveries` are (terminal's region, state) pairs.
    """
    counts = zero_counts()
    buckets: dict[str, dict[str, int]] = {}
    for region, state in deliveries:
        counts[state] += 1
        buckets.setdefault(_bucket(region, targets), zero_counts())[state] += 1
    return counts, buckets


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
    list_limit: int = 1000,
) -> BroadcastReport | None:
    """The report of one broadcast; `presence_of` gives the live presence (else the stored one).

    The lists of silent and failed terminals hold at most `list_limit` entries each (the totals
    say how many there are), so a report on a county-wide alert stays quick to fetch and read.
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
    counts, buckets = tally(((region, state) for _, region, state, *_ in rows), broadcast.regions)
    silent: list[tuple[str, str, str]] = []
    failed: list[tuple[str, str, str, str]] = []
    for terminal_id, region, state, reason, detail, by_command in rows:
        if state in UNACKNOWLEDGED_STATES or (state == DeliveryState.EXPIRED and reason is None):
            silent.append((terminal_id, region, state))
        elif state in (DeliveryState.REJECTED, DeliveryState.FAILED, DeliveryState.PREEMPTED):
            why = (
                (reason or state)
                + (f": {detail}" if detail else "")
                + (f" (by {by_command})" if by_command else "")
            )
            failed.append((terminal_id, region, state, why))
    listed_silent, listed_failed = silent[:list_limit], failed[:list_limit]
    if presence_of is None:
        stored = _stored_presence(session, [t[0] for t in listed_silent] + [t[0] for t in listed_failed])

        def presence_of(terminal_id: str) -> str:
            return stored.get(terminal_id, "unknown")

    unacknowledged = []
    for terminal_id, region, state in listed_silent:
        presence = presence_of(terminal_id)
        why = _WHY_BY_PRESENCE.get(presence, presence) if controller_connected else _WHY_CUT_OFF
        unacknowledged.append(
            SilentTerminal(id=terminal_id, region=region, state=state, presence=presence, why=why)
        )
    failures = [
        SilentTerminal(id=terminal_id, region=region, state=state, presence=presence_of(terminal_id), why=why)
        for terminal_id, region, state, why in listed_failed
    ]
    by_region = region_totals(session, buckets)
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
        by_region=by_region,
        unacknowledged_total=len(silent),
        unacknowledged=unacknowledged,
        failures_total=len(failed),
        failures=failures,
    )


def region_totals(session: Session, buckets: dict[str, dict[str, int]]) -> list[RegionTotals]:
    names = region_names(session, buckets)
    return [
        RegionTotals(code=code, name=names.get(code), terminals=sum(c.values()), counts=c)
        for code, c in sorted(buckets.items())
    ]


def delivery_regions(session: Session, broadcast_id: str) -> dict[str, str]:
    """terminal → its region, as recorded when the broadcast was accepted."""
    rows = session.exec(
        select(Delivery.terminal_id, Delivery.region_code).where(Delivery.broadcast_id == broadcast_id)
    ).all()
    return dict(rows)


def _stored_presence(session: Session, terminal_ids: list[str]) -> dict[str, str]:
    if not terminal_ids:
        return {}
    rows = session.exec(
        select(Terminal.id, Terminal.presence).where(col(Terminal.id).in_(terminal_ids))
    ).all()
    return dict(rows)
