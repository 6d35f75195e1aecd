"""The audit trail page: searchable, newest first, a page of records at a time."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from api.console.pages import ReaderDep, page
from api.deps import ControllerDep, SessionDep
from controller.accounts import Role
from controller.audit import search

router = APIRouter(include_in_schema=False)

PAGE = 50
ACTIONS = (
    "auth.",
    "broadcast.",
    "cap.",
    "schedule.",
    "terminal.",
    "group.",
    "programme.",
    "alarm.",
    "account.",
    "api_key.",
)


@router.get("/audit", response_class=HTMLResponse)
def audit(
    request: Request,
    reader: ReaderDep,
    session: SessionDep,
    controller: ControllerDep,
    actor: Annotated[str | None, Query(max_length=100)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    text: Annotated[str | None, Query(max_length=200)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_seq: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    allowed = reader.who.at_least(Role.APPROVER)
    regions = None if reader.who.covers(controller.settings.county_region) else [reader.who.region]
    records = (
        search(
            session,
            actor=actor or None,
            action=action or None,
            regions=regions,
            since=since,
            until=until,
            text=text or None,
            before_seq=before_seq,
            limit=PAGE,
        )
        if allowed
        else []
    )
    older = records[-1].seq if len(records) == PAGE else None
    return page(
        request,
        "audit.html",
        reader,
        allowed=allowed,
        records=records,
        older=older,
        actions=ACTIONS,
        query={"actor": actor or "", "action": action or "", "text": text or ""},
    )
