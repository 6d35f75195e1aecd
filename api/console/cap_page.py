"""The CAP page: messages upstream warning systems sent, newest first, and what became of each."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from api.console.pages import ReaderDep, page
from api.deps import SessionDep
from api.routes.cap import visible_messages

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
    messages = visible_messages(session, reader.who, outcome, before_id=before_id, limit=PAGE)
    older = messages[-1].id if len(messages) == PAGE else None
    return page(
        request, "cap.html", reader, messages=messages, older=older, outcomes=OUTCOMES, outcome=outcome or ""
    )
