"""Broadcasts: preview and send one, approve it, follow it, cancel or correct it."""

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from api.auth import (
    AUTH_RESPONSES,
    UNREADABLE,
    Approver,
    Operator,
    Problem,
    Responses,
    Viewer,
    ensure_covers,
    sees,
)
from api.deps import ControllerDep, SessionDep, read
from api.routes.groups import target_regions
from controller.accounts import Principal, Role
from controller.approvals import needs_approval
from controller.broadcasts import BroadcastNotFound, BroadcastRequest, created_since, resolve_target
from controller.confirmation import Summary, needs_confirmation, summarise
from controller.corrections import correction_request
from controller.models import NEVER_SENT, Broadcast, BroadcastState
from controller.reports import BroadcastReport, broadcast_report
from controller.service import Controller
from devices.messages import now_utc

router = APIRouter(prefix="/broadcasts", tags=["broadcasts"], responses=AUTH_RESPONSES)

_UNKNOWN: Responses = {404: {"model": Problem, "description": "no such broadcast"}}
_CONFLICT: Responses = {409: {"model": Problem, "description": "the broadcast's state does not allow it"}}
_INVALID: Responses = {
    422: {"model": Problem, "description": "the request cannot be carried out (the detail says why)"}
}
_STOPPING: Responses = {503: {"model": Problem, "description": "the controller is shutting down"}}
_SENDING: Responses = {
    **UNREADABLE,
    **_INVALID,
    428: {"model": Problem, "description": "an actual emergency needs the preview's `confirmation`"},
    429: {"model": Problem, "description": "too many broadcasts from this account in the last minute"},
    **_STOPPING,
}


class BroadcastAccepted(BaseModel):
    id: str
    state: str
    status: str
    terminals: int
    issued_at: datetime
    expires_at: datetime
    priority: int
    supersedes: str | None
    approval_deadline: datetime | None
    correction_of: str | None


class BroadcastSummary(BaseModel):
    id: str
    kind: str
    level: int | None
    status: str
    event: str | None
    state: str
    regions: list[str]
    groups: list[str] | None
    terminals: int
    issued_at: datetime
    expires_at: datetime
    created_by: str | None
    approval_deadline: datetime | None
    decided_by: str | None
    supersedes: str | None
    superseded_by: str | None
    correction_of: str | None


class Preview(BaseModel):
    summary: str = Field(description="what it will do, in English")
    summary_zh: str = Field(description="what it will do, in Chinese")
    terminals: int
    villages: int
    townships: int
    needs_approval: bool
    confirmation: str = Field(description="send it back as the request's `confirmation`")


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=500)] | None = None


class Correction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(min_length=1, max_length=4000)] | None = Field(
        default=None, description="instead of the prepared false-alarm text"
    )


def _accepted(broadcast: Broadcast) -> BroadcastAccepted:
    return BroadcastAccepted(
        **broadcast.model_dump(include=set(BroadcastAccepted.model_fields) - {"status"}),
        status=broadcast.status or "actual",
    )


async def _authorised(who: Principal, controller: Controller, request: BroadcastRequest) -> BroadcastRequest:
    """The request as `who` may send it: issued for their region unless they name one within it."""
    issuer = request.issuer_region or who.region
    ensure_covers(who, issuer, "the issuing region")
    reached = await read(
        controller,
        lambda s: target_regions(s, list(request.regions), list(request.groups), list(request.terminals)),
    )
    ensure_covers(who, reached, "the target")
    return request.model_copy(update={"issuer_region": issuer})


def _summary(controller: Controller, session: Session, request: BroadcastRequest) -> Summary:
    assert request.issuer_region is not None
    target = resolve_target(session, request, request.issuer_region)
    held = needs_approval(request, controller.settings.approval_levels)
    return summarise(session, controller.signing_key, request, target, held)


async def _checked(who: Principal, controller: Controller, request: BroadcastRequest) -> BroadcastRequest:
    """Authority, the per-account rate and, for a person's actual emergency, the confirmation."""
    request = await _authorised(who, controller, request)
    since = now_utc() - timedelta(minutes=1)
    recent = await read(controller, lambda s: created_since(s, who.name, since))
    limit = controller.settings.broadcasts_per_minute
    if recent >= limit:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{who.name} sent {recent} broadcasts in the last minute (the limit is {limit}); wait a moment",
            headers={"Retry-After": "60"},
        )
    if who.kind == "account" and needs_confirmation(request):
        summary = await read(controller, lambda s: _summary(controller, s, request))
        if request.confirmation != summary.confirmation:
            raise HTTPException(
                status.HTTP_428_PRECONDITION_REQUIRED,
                "an actual emergency must be confirmed: POST /api/v1/broadcasts/preview with this request, "
                "show its summary, and send its `confirmation` (the target may have changed since): "
                + summary.text_en,
            )
    return request


@router.post("/preview", response_model=Preview, responses={**UNREADABLE, **_INVALID})
async def preview(request: BroadcastRequest, who: Operator, controller: ControllerDep) -> Preview:
    """What this request would do, in words ("Level II flood emergency broadcast to … 197 villages,
    412 terminals. ACTUAL — not a drill"), whether it would wait for approval, and the
    `confirmation` to send with it. Nothing is stored or sent."""
    request = await _authorised(who, controller, request)
    summary = await read(controller, lambda s: _summary(controller, s, request))
    return Preview(
        summary=summary.text_en,
        summary_zh=summary.text_zh,
        terminals=summary.terminals,
        villages=summary.villages,
        townships=summary.townships,
        needs_approval=summary.needs_approval,
        confirmation=summary.confirmation,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BroadcastAccepted, responses=_SENDING)
async def send_broadcast(
    request: BroadcastRequest, who: Operator, controller: ControllerDep
) -> BroadcastAccepted:
    """Persist the broadcast and a delivery per terminal in the target, then publish it. A live
    (`actual`) emergency at a level in CUNXIANG_APPROVAL_LEVELS (default I and II) is stored
    `awaiting_approval` instead, and sent when a second person approves it."""
    request = await _checked(who, controller, request)
    return _accepted(await controller.submit(request, by=who))


@router.post(
    "/{broadcast_id}/update",
    status_code=status.HTTP_201_CREATED,
    response_model=BroadcastAccepted,
    responses={**_UNKNOWN, **_CONFLICT, **_SENDING},
)
async def update_broadcast(
    broadcast_id: str, request: BroadcastRequest, who: Operator, controller: ControllerDep
) -> BroadcastAccepted:
    """Issue an update that supersedes this broadcast (CAP's Update with `references`): new text or
    audio, a new level, the same target or wider.

    While the broadcast is still going, each terminal ends it as the update reaches it (`cancelled`,
    `by` the update) and plays the update instead; the broadcast becomes `superseded`. An update of
    one that is over is sent as a new broadcast linked to it. 404 if it does not exist; 409 if it
    was cancelled or already updated (update the newest one); 422 if the update would leave out
    terminals the broadcast still reaches. Its sender or an approver over it may update it.
    """
    await _may_change(who, controller, broadcast_id)
    request = await _checked(who, controller, request)
    return _accepted(await controller.submit(request, updates=broadcast_id, by=who))


@router.post(
    "/{broadcast_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BroadcastAccepted,
    responses={**_UNKNOWN, **_CONFLICT, **_STOPPING},
)
async def cancel_broadcast(broadcast_id: str, who: Operator, controller: ControllerDep) -> BroadcastAccepted:
    """Stop it everywhere: terminals playing it stop and report `cancelled`; the rest never start it.
    One awaiting approval is withdrawn. Its sender, or an approver over its region, may cancel it.

    409 if it is already over or being cancelled.
    """
    await _may_change(who, controller, broadcast_id)
    return _accepted(await controller.cancel(broadcast_id, by=who))


@router.post(
    "/{broadcast_id}/false-alarm",
    status_code=status.HTTP_201_CREATED,
    response_model=BroadcastAccepted,
    responses={**UNREADABLE, **_UNKNOWN, **_CONFLICT, **_INVALID, **_STOPPING},
)
async def correct_false_alarm(
    broadcast_id: str, who: Operator, controller: ControllerDep, body: Correction | None = None
) -> BroadcastAccepted:
    """Declare a broadcast a false alarm in one step: a prepared correction (误报更正) goes to the
    same target at the same level, at once (it never waits for approval). If the broadcast is
    still going, the correction supersedes it, so terminals stop it and play the correction; if it
    is over or was cancelled, the correction follows it. Its sender or an approver over it may."""
    original = await _may_change(who, controller, broadcast_id)
    if original.state in (BroadcastState.AWAITING_APPROVAL, *NEVER_SENT):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"broadcast {broadcast_id} was never sent ({original.state}); there is nothing to correct",
        )
    if original.superseded_by is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"broadcast {broadcast_id} was updated by {original.superseded_by}; correct that one",
        )
    request = correction_request(original, controller.settings.timezone, body.text if body else None)
    ongoing = original.state in (BroadcastState.ACCEPTED, BroadcastState.ACTIVE)
    broadcast = await controller.submit(
        request, updates=broadcast_id if ongoing else None, by=who, correction_of=broadcast_id
    )
    return _accepted(broadcast)


@router.post(
    "/{broadcast_id}/approve",
    response_model=BroadcastAccepted,
    responses={**_UNKNOWN, **_CONFLICT, **_INVALID, **_STOPPING},
)
async def approve_broadcast(broadcast_id: str, who: Approver, controller: ControllerDep) -> BroadcastAccepted:
    """Approve a broadcast awaiting approval: it is sent now. Needs the approver role over its
    region; nobody approves their own (403). 409 if it is not awaiting approval or has lapsed."""
    return _accepted(await controller.approve(broadcast_id, who))


@router.post(
    "/{broadcast_id}/reject",
    response_model=BroadcastAccepted,
    responses={**UNREADABLE, **_UNKNOWN, **_CONFLICT},
)
async def reject_broadcast(
    broadcast_id: str, who: Approver, controller: ControllerDep, body: Decision | None = None
) -> BroadcastAccepted:
    """Refuse a broadcast awaiting approval; nothing is sent. The same rules as approving."""
    return _accepted(await controller.reject(broadcast_id, who, body.reason if body else None))


@router.get("", response_model=list[BroadcastSummary])
def recent_broadcasts(
    who: Viewer,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    state: Annotated[BroadcastState | None, Query(description="only broadcasts in this state")] = None,
) -> list[BroadcastSummary]:
    """The newest broadcasts that concern your region (issued within it, or reaching into it)."""
    query = select(Broadcast).order_by(col(Broadcast.issued_at).desc())
    if state is not None:
        query = query.where(Broadcast.state == state.value)
    found: list[BroadcastSummary] = []
    for page in session.exec(query.execution_options(yield_per=500)).partitions():
        for broadcast in page:
            if concerns(who, broadcast):
                found.append(BroadcastSummary.model_validate(_public(broadcast), from_attributes=False))
                if len(found) == limit:
                    return found
    return found


@router.get("/{broadcast_id}", response_model=BroadcastReport, responses=_UNKNOWN)
def broadcast_progress(
    broadcast_id: str,
    who: Viewer,
    session: SessionDep,
    controller: ControllerDep,
    list_limit: Annotated[
        int, Query(ge=0, le=100_000, description="at most this many terminals per list")
    ] = 1000,
) -> BroadcastReport:
    """Totals per delivery state, per region below the target, and who has not acknowledged, and why."""
    visible(who, session, broadcast_id)
    report = broadcast_report(
        session,
        broadcast_id,
        presence_of=controller.presence_of,
        controller_connected=controller.connected,
        list_limit=list_limit,
    )
    assert report is not None
    return report


def _public(broadcast: Broadcast) -> dict[str, object]:
    return broadcast.model_dump() | {"status": broadcast.status or "actual"}


def concerns(who: Principal, broadcast: Broadcast) -> bool:
    return who.covers(broadcast.issuer_region) or sees(who, broadcast.regions)


def visible(who: Principal, session: Session, broadcast_id: str) -> Broadcast:
    """The broadcast if it concerns `who`'s region; 404 if unknown, 403 if not theirs to see."""
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:
        raise BroadcastNotFound(f"no broadcast {broadcast_id!r}")
    if not concerns(who, broadcast):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"broadcast {broadcast_id} does not concern your region {who.region}"
        )
    return broadcast


async def _may_change(who: Principal, controller: Controller, broadcast_id: str) -> Broadcast:
    """The broadcast if `who` sent it, or is an approver over its issuing region; else 403."""
    broadcast = await read(controller, lambda session: visible(who, session, broadcast_id))
    if broadcast.created_by == who.name and who.covers(broadcast.issuer_region):
        return broadcast
    if who.at_least(Role.APPROVER) and who.covers(broadcast.issuer_region):
        return broadcast
    raise HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"only its sender ({broadcast.created_by or 'the scheduler'}) or an approver over "
        f"{broadcast.issuer_region} may change broadcast {broadcast_id}",
    )
