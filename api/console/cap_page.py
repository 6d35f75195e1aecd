"""The CAP page: messages upstream warning systems sent, newest first, and what became of each."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import col, select

from api.auth import sees
from api.console.pages import ReaderDep, page
from api.deps import SessionDep
from controller.models import CapMessage

router = APIRouter(include_in_schema=False)

PAGE = 50
OUTCOMES = ("broadcast", "update", "cancel", "store_only", "rejected")


@router.get("/cap", response_class=HTMLResponse)
def cap_messages(
    request: Request,
    reader: ReaderDep,
    session: SessionDep,
    outcome: Annotated[str | None, Query(max_length=16)] = None,
    before_id: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    query = select(CapMessage).order_by(col(CapMessage.id).desc())
    if outcome:
        query = query.where(CapMessage.outcome == outcome)
    if before_id is not None:
        query = query.where(col(CapMessage.id) < before_id)
    messages: list[CapMessage] = []
    for chunk in session.exec(query.execution_options(yield_per=200)).partitions():
        messages.extend(m for m in chunk if sees(reader.who, [m.region]))
        if len(messages) >= PAGE:
            break
    messages = messages[:PAGE]
    older = messages[-1].id if len(messages) == PAGE else None
    return page(
        request, "cap.html", reader, messages=messages, older=older, outcomes=OUTCOMES, outcome=outcome or ""
    )
