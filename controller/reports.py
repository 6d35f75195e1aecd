"""What an operator sees of a broadcast: totals per state, per region below the target, who is
silent, and, village by village, every terminal that did not play it and why."""

from collections.abc import Callable, Iterable
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select as select_columns
from sqlmodel import Session, col, select

from controller.delivery import UNACKNOWLEDGED_STATES, UNCONFIRMED, DeliveryState
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
    """in words (English); the parts below say the same for a reader in another language"""
    silent: bool
    """never heard from about it: its presence says why"""
    reason: str | None
    """the terminal's reason code (busy, higher_priority, unsigned, playback_error…)"""
    detail: str | None
    by: str | None
    """the command that ended it (a cancel, an update)"""


class MissedTerminal(BaseModel):
    id: str
    state: str
    presence: str
    why: str
    silent: bool
    reason: str | None
    detail: str | None
    by: str | None


class VillageMisses(BaseModel):
    """The terminals of one village (or of whatever region they are registered in) that did not play."""

    code: str
    name: str | None
    township: str | None
    township_name: str | None
    count: int
    terminals: list[MissedTerminal]


class BroadcastReport(BaseModel):
    id: str
    state: str
    kind: str
    level: int | None
    priority: int
    issuer_region: str
    regions: list[str]
    groups: list[str] | None
    terminal_ids: list[str] | None
    supersedes: str | None
    superseded_by: str | None
    text: str | None
    status: str = Field(description="actual, exercise (演练) or test (测试)")
    event: str | None
    created_by: str | None
    approval_deadline: datetime | None = Field(description="while awaiting approval: when it lapses")
    decided_by: str | None = Field(description="who approved (or rejected) it")
    correction_of: str | None = Field(description="the broadcast it declares a false alarm")
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
    not_played_total: int
    not_played: list[VillageMisses]
    """every terminal not `completed`, by village (while it goes on: those that have not yet)"""


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


Row = tuple[str, str, str, str | None, str | None, str | None]

_FAILURE_STATES = (DeliveryState.REJECTED, DeliveryState.FAILED, DeliveryState.PREEMPTED)
_WHY_BY_STATE: dict[str, str] = {
    DeliveryState.RECEIVED: "received, not playing yet",
    DeliveryState.PLAYING: "playing now",
    DeliveryState.PREEMPTED: "pre-empted",
    DeliveryState.REJECTED: "rejected",
    DeliveryState.FAILED: "failed",
    DeliveryState.CANCELLED: "cancelled",
    DeliveryState.EXPIRED: "expired while it played",
}


def broadcast_report(
    session: Session,
    broadcast_id: str,
    presence_of: Callable[[str], str] | None = None,
    controller_connected: bool = True,
    list_limit: int = 1000,
) -> BroadcastReport | None:
    """The report of one broadcast; `presence_of` gives the live presence (else the stored one).

    The lists hold at most `list_limit` terminals each (the totals say how many there are), so a
    report on a county-wide alert stays quick to fetch and read. While the controller itself is
    cut off from the broker it cannot know who is online, and the report says so instead of
    blaming the terminals.
    """
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:
        return None
    rows: list[Row] = [
        (terminal_id, region, state, reason, detail, by_command)
        for terminal_id, region, state, reason, detail, by_command in session.execute(
            select_columns(
                col(Delivery.terminal_id),
                col(Delivery.region_code),
                col(Delivery.state),
                col(Delivery.reason),
                col(Delivery.detail),
                col(Delivery.by_command),
            )
            .where(col(Delivery.broadcast_id) == broadcast_id)
            .order_by(Delivery.region_code, Delivery.terminal_id)
        )
    ]
    counts, buckets = tally(((region, state) for _, region, state, *_ in rows), broadcast.regions)
    missed = [row for row in rows if row[2] != DeliveryState.COMPLETED]
    silent = [row for row in missed if _silent(row[2], row[3])]
    failed = [row for row in missed if row[2] in _FAILURE_STATES]
    listed = missed[:list_limit]
    if presence_of is None:
        stored = _stored_presence(
            session, list({row[0] for row in listed + silent[:list_limit] + failed[:list_limit]})
        )

        def presence_of(terminal_id: str) -> str:
            return stored.get(terminal_id, "unknown")

    def why(row: Row) -> tuple[str, str]:
        terminal_id, _region, state, reason, detail, by_command = row
        presence = presence_of(terminal_id)
        if _silent(state, reason):
            silence = _WHY_BY_PRESENCE.get(presence, presence) if controller_connected else _WHY_CUT_OFF
            return presence, (
                f"expired before it was played: {silence}" if state == DeliveryState.EXPIRED else silence
            )
        return presence, _WHY_BY_STATE.get(state, "") + _explained(reason, detail, by_command)

    def entry(row: Row) -> SilentTerminal:
        presence, words = why(row)
        terminal_id, region, state, reason, detail, by_command = row
        return SilentTerminal(
            id=terminal_id,
            region=region,
            state=state,
            presence=presence,
            why=words,
            silent=_silent(state, reason),
            reason=reason,
            detail=detail,
            by=by_command,
        )

    return BroadcastReport(
        id=broadcast.id,
        state=broadcast.state,
        kind=broadcast.kind,
        level=broadcast.level,
        priority=broadcast.priority,
        issuer_region=broadcast.issuer_region,
        regions=broadcast.regions,
        groups=broadcast.groups,
        terminal_ids=broadcast.terminal_ids,
        supersedes=broadcast.supersedes,
        superseded_by=broadcast.superseded_by,
        text=broadcast.text,
        status=broadcast.status or "actual",
        event=broadcast.event,
        created_by=broadcast.created_by,
        approval_deadline=broadcast.approval_deadline,
        decided_by=broadcast.decided_by,
        correction_of=broadcast.correction_of,
        issued_at=broadcast.issued_at,
        expires_at=broadcast.expires_at,
        finished_at=broadcast.finished_at,
        terminals=broadcast.terminals,
        counts=counts,
        by_region=region_totals(session, buckets),
        unacknowledged_total=len(silent),
        unacknowledged=[entry(row) for row in silent[:list_limit]],
        failures_total=len(failed),
        failures=[entry(row) for row in failed[:list_limit]],
        not_played_total=len(missed),
        not_played=_by_village(session, missed, [entry(row) for row in listed]),
    )


def _silent(state: str, reason: str | None) -> bool:
    """Never heard from about this broadcast (the terminal's presence says why)."""
    return state in UNACKNOWLEDGED_STATES or (state == DeliveryState.EXPIRED and reason is None)


def _explained(reason: str | None, detail: str | None, by_command: str | None) -> str:
    if reason == UNCONFIRMED:
        reason = "before it reached the terminal"
    return (
        (f": {reason}" if reason else "")
        + (f": {detail}" if detail else "")
        + (f" (by {by_command})" if by_command else "")
    )


def _by_village(session: Session, missed: list[Row], listed: list[SilentTerminal]) -> list[VillageMisses]:
    """`listed` grouped by the terminal's region (a village, mostly), with every village's full count."""
    counts: dict[str, int] = {}
    for row in missed:
        counts[row[1]] = counts.get(row[1], 0) + 1
    townships = {code: code[:9] if len(code) == 12 else None for code in counts}
    names = region_names(session, set(counts) | {t for t in townships.values() if t})
    villages: dict[str, list[MissedTerminal]] = {code: [] for code in counts}
    for item in listed:
        villages[item.region].append(MissedTerminal(**item.model_dump(exclude={"region"})))
    return [
        VillageMisses(
            code=code,
            name=names.get(code),
            township=townships[code],
            township_name=names.get(townships[code] or ""),
            count=counts[code],
            terminals=villages[code],
        )
        for code in counts
    ]


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
