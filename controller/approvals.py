"""The two-person rule: a live level I or II alert waits until a second person approves it.

Which broadcasts wait is configurable (CUNXIANG_APPROVAL_LEVELS, default 1 and 2); only `actual`
emergencies do: exercises, tests, lower levels, notices and programmes go out at once, and so does
a false-alarm correction (it must never wait). The approver must hold the `approver` role (or
`admin`) over the issuing region, and must not be the one who asked. A request nobody approves
within CUNXIANG_APPROVAL_TIMEOUT_S lapses; nothing was ever sent for it.
"""

from datetime import datetime

from sqlmodel import Session, col, select

from controller.accounts import Principal, Role
from controller.audit import AuditEntry, append
from controller.broadcasts import BroadcastConflict, BroadcastNotFound, BroadcastRequest
from controller.models import Broadcast, BroadcastState
from devices.messages import BroadcastStatus
from devices.priority import BroadcastKind


class ApprovalRefused(PermissionError):
    """This principal may not decide on this broadcast (their own, or outside their region)."""


def needs_approval(request: BroadcastRequest, levels: list[int]) -> bool:
    return (
        request.kind is BroadcastKind.EMERGENCY
        and request.status is BroadcastStatus.ACTUAL
        and request.level is not None
        and int(request.level) in levels
    )


def awaiting(session: Session, broadcast_id: str, who: Principal, now: datetime) -> Broadcast:
    """The held broadcast `who` is about to approve or reject; raises BroadcastNotFound,
    BroadcastConflict (not awaiting approval, or lapsed) or ApprovalRefused."""
    held = session.get(Broadcast, broadcast_id)
    if held is None:
        raise BroadcastNotFound(f"no broadcast {broadcast_id!r}")
    if held.state != BroadcastState.AWAITING_APPROVAL:
        raise BroadcastConflict(f"broadcast {broadcast_id} is {held.state}, not awaiting approval")
    if held.approval_deadline is not None and held.approval_deadline <= now:
        raise BroadcastConflict(
            f"the approval of broadcast {broadcast_id} lapsed at {held.approval_deadline.isoformat()}; "
            "send it again if it is still needed"
        )
    if not who.at_least(Role.APPROVER):
        raise ApprovalRefused(f"approving needs the approver role; {who.name} is {who.role.value}")
    if held.created_by == who.name:
        raise ApprovalRefused("you cannot approve or reject your own broadcast: a second person must")
    if not who.covers(held.issuer_region):
        raise ApprovalRefused(
            f"broadcast {broadcast_id} is issued for {held.issuer_region}, outside your region {who.region}"
        )
    return held


def held_request(held: Broadcast) -> BroadcastRequest:
    assert held.request is not None
    return BroadcastRequest.model_validate_json(held.request)


def reject(
    session: Session, broadcast_id: str, who: Principal, reason: str | None, now: datetime
) -> Broadcast:
    held = awaiting(session, broadcast_id, who, now)
    held.state = BroadcastState.REJECTED
    held.decided_by, held.decided_at, held.finished_at = who.name, now, now
    session.add(held)
    append(
        session, who.audit("broadcast.reject", "broadcast", held.id, held.issuer_region, reason=reason), now
    )
    session.commit()
    return held


def lapse_overdue(session: Session, now: datetime) -> list[str]:
    """Mark every request whose approval time has passed as lapsed; returns their ids."""
    overdue = session.exec(
        select(Broadcast).where(
            col(Broadcast.state) == BroadcastState.AWAITING_APPROVAL,
            col(Broadcast.approval_deadline) <= now,
        )
    ).all()
    for held in overdue:
        held.state = BroadcastState.APPROVAL_EXPIRED
        held.finished_at = now
        session.add(held)
        append(
            session,
            AuditEntry(
                actor="system",
                action="broadcast.approval_expired",
                object_type="broadcast",
                object_id=held.id,
                region=held.issuer_region,
                detail={"requested_by": held.created_by},
            ),
            now,
        )
    session.commit()
    return [held.id for held in overdue]
