"""The console's pages. Each is rendered on the server from the same records the API reads; what
changes on a page (the live coverage, the confirmation, a chosen region's villages) is fetched from
the API by the page's script or by htmx, so the console can do nothing the API would not allow."""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session, col, select

from api.auth import ensure_covers
from api.console.rendering import render
from api.console.session import console_principal
from api.deps import SessionDep
from api.routes.broadcasts import concerns, visible
from api.routes.groups import all_groups
from controller.accounts import Principal, Role
from controller.models import Broadcast, BroadcastState, Region
from controller.programmes import list_programmes

router = APIRouter(include_in_schema=False)

RECENT = 20


@dataclass(frozen=True)
class Reader:
    """Who reads a page, with the name of their region for the header."""

    who: Principal
    region_name: str


def reader(who: Annotated[Principal, Depends(console_principal)], session: SessionDep) -> Reader:
    region = session.get(Region, who.region)
    return Reader(who, region.name if region else who.region)


ReaderDep = Annotated[Reader, Depends(reader)]


def page(request: Request, template: str, reader: Reader, **context: Any) -> HTMLResponse:
    return render(request, template, who=reader.who, region_name=reader.region_name, **context)


def _concerning(
    session: Session, who: Principal, *, state: str | None = None, limit: int = RECENT
) -> list[Broadcast]:
    query = select(Broadcast).order_by(col(Broadcast.issued_at).desc())
    if state is not None:
        query = query.where(Broadcast.state == state)
    found = []
    for broadcast in session.exec(query.limit(2000)):
        if concerns(who, broadcast):
            found.append(broadcast)
            if len(found) == limit:
                break
    return found


@router.get("/", response_class=HTMLResponse)
def home(request: Request, reader: ReaderDep, session: SessionDep) -> HTMLResponse:
    waiting = _concerning(session, reader.who, state=BroadcastState.AWAITING_APPROVAL, limit=100)
    return page(
        request,
        "home.html",
        reader,
        recent=_concerning(session, reader.who),
        waiting=waiting,
        approver=reader.who.at_least(Role.APPROVER),
    )


@router.get("/approvals", response_class=HTMLResponse)
def approvals(request: Request, reader: ReaderDep, session: SessionDep) -> HTMLResponse:
    waiting = _concerning(session, reader.who, state=BroadcastState.AWAITING_APPROVAL, limit=100)
    return page(
        request, "approvals.html", reader, waiting=waiting, approver=reader.who.at_least(Role.APPROVER)
    )


@router.get("/send", response_class=HTMLResponse)
def send(request: Request, reader: ReaderDep, session: SessionDep) -> HTMLResponse:
    root = session.get(Region, reader.who.region)
    groups = all_groups(reader.who, session)
    return page(
        request,
        "send.html",
        reader,
        root=root,
        children=children_of(session, reader.who.region),
        groups=groups,
        programmes=list_programmes(session, 200),
        can_send=reader.who.at_least(Role.OPERATOR),
    )


@router.get("/send/regions/{code}", response_class=HTMLResponse)
def region_children(code: str, request: Request, reader: ReaderDep, session: SessionDep) -> HTMLResponse:
    """The regions directly below `code`, as more branches of the target tree (htmx)."""
    ensure_covers(reader.who, code, "the region")
    return render(request, "region_branch.html", children=children_of(session, code))


def children_of(session: Session, code: str) -> list[Region]:
    return list(
        session.exec(select(Region).where(Region.parent_code == code).order_by(col(Region.code))).all()
    )


@router.get("/broadcasts/{broadcast_id}", response_class=HTMLResponse)
def broadcast(broadcast_id: str, request: Request, reader: ReaderDep, session: SessionDep) -> HTMLResponse:
    found = visible(reader.who, session, broadcast_id)
    return page(
        request,
        "broadcast.html",
        reader,
        broadcast=found,
        may_change=_may_change(reader.who, found),
        may_decide=reader.who.at_least(Role.APPROVER) and found.created_by != reader.who.name,
        names=_names(session, found),
    )


def _may_change(who: Principal, broadcast: Broadcast) -> bool:
    if not who.covers(broadcast.issuer_region):
        return False
    return broadcast.created_by == who.name or who.at_least(Role.APPROVER)


def _names(session: Session, broadcast: Broadcast) -> dict[str, str]:
    codes = set(broadcast.regions)
    rows = session.exec(select(Region.code, Region.name).where(col(Region.code).in_(codes))).all()
    return dict(rows)
