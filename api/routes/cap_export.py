"""CAP 1.2 out: every broadcast as a CAP message, and an Atom feed of the current alerts."""

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlmodel import Session, col, select

from api.auth import AUTH_RESPONSES, Problem, Responses, Viewer
from api.deps import ControllerDep, SessionDep
from api.routes.broadcasts import concerns, visible
from controller.cap.atom import ATOM_MEDIA_TYPE, atom_feed
from controller.cap.export import (
    CAP_MEDIA_TYPE,
    AlertContext,
    CapPublisher,
    export_alert,
    export_cancel,
    to_bytes,
)
from controller.cap.geometry import TerminalPosition
from controller.models import Broadcast, BroadcastState, Region, Terminal
from controller.settings import Settings
from devices.messages import Cancel, decode, now_utc
from devices.priority import BroadcastKind

router = APIRouter(tags=["cap"], responses=AUTH_RESPONSES)

CURRENT_STATES = (BroadcastState.ACCEPTED, BroadcastState.ACTIVE, BroadcastState.FINISHED)
"""sent and not ended early: current until it expires (finished: every terminal has played it)"""

_CAP: Responses = {
    200: {"content": {CAP_MEDIA_TYPE: {"schema": {"type": "string"}}}, "description": "a CAP 1.2 message"},
    404: {"model": Problem, "description": "no such broadcast"},
    409: {"model": Problem, "description": "a cancel was asked for, and the broadcast was never cancelled"},
}
_ATOM: Responses = {
    200: {"content": {ATOM_MEDIA_TYPE: {"schema": {"type": "string"}}}, "description": "an Atom 1.0 feed"}
}


class CapMessage(StrEnum):
    ALERT = "alert"
    CANCEL = "cancel"


@router.get("/broadcasts/{broadcast_id}/cap", response_class=Response, responses=_CAP)
def broadcast_cap(
    broadcast_id: str,
    who: Viewer,
    session: SessionDep,
    controller: ControllerDep,
    message: Annotated[
        CapMessage,
        Query(
            description="`alert`: the broadcast (an Alert, or an Update of the one it replaced); "
            "`cancel`: its cancel, once cancelled"
        ),
    ] = CapMessage.ALERT,
) -> Response:
    """The broadcast as a CAP 1.2 message (docs/cap.md, "Export"), to whoever may see the broadcast.
    A cancelled broadcast is still what it was; its Cancel is `?message=cancel` (409 before it is
    cancelled). One never sent (held for approval, refused, lapsed) is a Draft."""
    broadcast = visible(who, session, broadcast_id)
    sender = publisher(controller.settings)
    context = alert_contexts(session, [broadcast])[broadcast.id]
    if message is CapMessage.ALERT:
        alert = export_alert(broadcast, sender, context)
    elif broadcast.cancel_command is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"broadcast {broadcast_id} is {broadcast.state}: no cancel of it was ever sent",
        )
    else:
        cancel = decode(Cancel, broadcast.cancel_command)
        alert = export_cancel(broadcast, cancel, sender, context)
    return Response(to_bytes(alert), media_type=CAP_MEDIA_TYPE)


@router.get("/cap/feed", response_class=Response, responses=_ATOM)
def cap_feed(who: Viewer, session: SessionDep, controller: ControllerDep) -> Response:
    """The current alerts that concern your region, newest first, as an Atom 1.0 feed with each
    CAP alert inside its entry: sent and neither expired, cancelled, updated nor corrected.
    Programmes are daily listening, not alerts, and are left out. An alert cancelled before it
    expired is there as its Cancel until then, so a consumer reading the feed learns it is off."""
    settings = controller.settings
    now = now_utc()
    current = [b for b in current_alerts(session, now) if concerns(who, b)]
    cancelled = [b for b in cancelled_alerts(session, now) if concerns(who, b)]
    contexts = alert_contexts(session, current + cancelled)
    sender = publisher(settings)
    county = session.get(Region, settings.county_region)
    county_name = county.name if county is not None else settings.county_region
    url = f"{settings.base_url}/api/v1/broadcasts"
    entries = [(b.issued_at, export_alert(b, sender, contexts[b.id]), f"{url}/{b.id}/cap") for b in current]
    for b in cancelled:
        assert b.cancel_command is not None
        cancel = decode(Cancel, b.cancel_command)
        message = export_cancel(b, cancel, sender, contexts[b.id])
        entries.append((cancel.issued_at, message, f"{url}/{b.id}/cap?message=cancel"))
    entries.sort(key=lambda entry: entry[0], reverse=True)
    feed = atom_feed(
        [(message, href) for _sent, message, href in entries],
        publisher=sender,
        title=f"{county_name}: current alerts (Cunxiang)",
        author=county_name,
        self_url=f"{settings.base_url}/api/v1/cap/feed",
        now=now,
    )
    return Response(feed, media_type=ATOM_MEDIA_TYPE)


def publisher(settings: Settings) -> CapPublisher:
    return CapPublisher(settings.cap_sender, ZoneInfo(settings.timezone), settings.cap_rules)


def current_alerts(session: Session, now: datetime) -> list[Broadcast]:
    """Broadcasts sent, not over early, not updated or corrected, not expired, but programmes;
    newest first."""
    # A false alarm corrected once it was over is not superseded on the wire, but is no less false.
    corrected = select(Broadcast.correction_of).where(col(Broadcast.correction_of).is_not(None))
    query = (
        select(Broadcast)
        .where(
            col(Broadcast.state).in_(CURRENT_STATES),
            col(Broadcast.superseded_by).is_(None),
            col(Broadcast.id).not_in(corrected),
            col(Broadcast.kind) != BroadcastKind.PROGRAMME,
            col(Broadcast.issued_at) <= now,
            col(Broadcast.expires_at) > now,
        )
        .order_by(col(Broadcast.issued_at).desc())
    )
    return list(session.exec(query).all())


def cancelled_alerts(session: Session, now: datetime) -> list[Broadcast]:
    """Alerts whose cancel was sent before they expired (the newest of each line of updates)."""
    query = select(Broadcast).where(
        col(Broadcast.state).in_((BroadcastState.CANCELLING, BroadcastState.CANCELLED)),
        col(Broadcast.cancel_command).is_not(None),
        col(Broadcast.superseded_by).is_(None),
        col(Broadcast.kind) != BroadcastKind.PROGRAMME,
        col(Broadcast.expires_at) > now,
    )
    return list(session.exec(query).all())


def alert_contexts(session: Session, broadcasts: Sequence[Broadcast]) -> dict[str, AlertContext]:
    """What each broadcast's CAP needs from the database, in three queries for them all."""
    codes = {code for b in broadcasts for code in (*b.regions, b.issuer_region)}
    names = dict(session.exec(select(Region.code, Region.name).where(col(Region.code).in_(codes))).all())
    singles = {t for b in broadcasts for t in b.terminal_ids or ()}
    placed = session.exec(
        select(Terminal.id, Terminal.latitude, Terminal.longitude).where(col(Terminal.id).in_(singles))
    ).all()
    positions = {
        id_: TerminalPosition(id_, lat, lon)
        for id_, lat, lon in placed
        if lat is not None and lon is not None
    }
    # A correction of a broadcast already over is not its update on the wire, but it is in CAP.
    referenced = {b.id: b.supersedes or b.correction_of for b in broadcasts}
    wanted = {r for r in referenced.values() if r is not None}
    replaced = {b.id: b for b in session.exec(select(Broadcast).where(col(Broadcast.id).in_(wanted))).all()}
    return {
        b.id: AlertContext(
            region_names=names,
            terminals=[positions[t] for t in b.terminal_ids or () if t in positions],
            replaces=replaced.get(referenced[b.id] or ""),
        )
        for b in broadcasts
    }
