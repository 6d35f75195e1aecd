"""Broadcasts: send one, follow its delivery."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel
from sqlmodel import col, select

from api.deps import ControllerDep, SessionDep
from controller.broadcasts import BroadcastRequest
from controller.models import Broadcast
from controller.reports import BroadcastReport, broadcast_report

router = APIRouter(prefix="/broadcasts", tags=["broadcasts"])


class BroadcastAccepted(BaseModel):
    id: str
    state: str
    terminals: int
    issued_at: datetime
    expires_at: datetime
    priority: int
    supersedes: str | None


class BroadcastSummary(BaseModel):
    id: str
    kind: str
    level: int | None
    state: str
    regions: list[str]
    groups: list[str] | None
    terminals: int
    issued_at: datetime
    expires_at: datetime
    supersedes: str | None
    superseded_by: str | None


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BroadcastAccepted)
async def send_broadcast(request: BroadcastRequest, controller: ControllerDep) -> Broadcast:
    """Persist the broadcast and a delivery per terminal in the target, then publish it."""
    return await controller.submit(request)


@router.post("/{broadcast_id}/update", status_code=status.HTTP_201_CREATED, response_model=BroadcastAccepted)
async def update_broadcast(
    broadcast_id: str, request: BroadcastRequest, controller: ControllerDep
) -> Broadcast:
    """Issue an update that supersedes this broadcast (CAP's Update with `references`): new text or
    audio, a new level, the same target or wider.

    While the broadcast is still going, each terminal ends it as the update reaches it (`cancelled`,
    `by` the update) and plays the update instead; the broadcast becomes `superseded`. An update of
    one that is over is sent as a new broadcast linked to it. 404 if it does not exist; 409 if it
    was cancelled or already updated (update the newest one); 422 if the update would leave out
    terminals the broadcast still reaches.
    """
    return await controller.submit(request, updates=broadcast_id)


@router.post("/{broadcast_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=BroadcastAccepted)
async def cancel_broadcast(broadcast_id: str, controller: ControllerDep) -> Broadcast:
    """Stop it everywhere: terminals playing it stop and report `cancelled`; the rest never start it.

    409 if it is already over or being cancelled.
    """
    return await controller.cancel(broadcast_id)


@router.get("", response_model=list[BroadcastSummary])
def recent_broadcasts(session: SessionDep, limit: int = 50) -> list[Broadcast]:
    limit = max(1, min(limit, 500))
    return list(session.exec(select(Broadcast).order_by(col(Broadcast.issued_at).desc()).limit(limit)).all())


@router.get("/{broadcast_id}", response_model=BroadcastReport)
def broadcast_progress(
    broadcast_id: str,
    session: SessionDep,
    controller: ControllerDep,
    list_limit: Annotated[
        int, Query(ge=0, le=100_000, description="at most this many terminals per list")
    ] = 1000,
) -> BroadcastReport:
    """Totals per delivery state, per region below the target, and who has not acknowledged, and why."""
    report = broadcast_report(
        session,
        broadcast_id,
        presence_of=controller.presence_of,
        controller_connected=controller.connected,
        list_limit=list_limit,
    )
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no broadcast {broadcast_id!r}")
    return report
