"""CAP 1.2 in: upstream warning systems post alerts; every message is kept with its outcome."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlmodel import Session, col, select

from api.auth import AUTH_RESPONSES, Operator, Problem, Responses, Viewer, sees
from api.deps import ControllerDep, SessionDep
from controller.accounts import Principal
from controller.cap.intake import CapReceipt
from controller.models import CapMessage

router = APIRouter(prefix="/cap", tags=["cap"], responses=AUTH_RESPONSES)

CAP_MEDIA_TYPES = ("application/cap+xml", "application/xml", "text/xml")
_XML_BODY = {
    "requestBody": {
        "required": True,
        "description": "one CAP 1.2 `<alert>` document, as the sender made it",
        "content": {media: {"schema": {"type": "string"}} for media in CAP_MEDIA_TYPES},
    }
}


class CapProblem(Problem):
    """A message refused, with the record kept of it."""

    message_id: int


class CapMessagePublic(BaseModel):
    id: int
    received_at: datetime
    received_by: str
    region: str
    origin: str | None
    sha256: str
    size: int
    kept: bool
    """whether its bytes are kept (GET …/raw); not when it was over the size limit"""
    sender: str | None
    identifier: str | None
    sent: datetime | None
    msg_type: str | None
    status: str | None
    outcome: str
    reason: str | None
    notes: list[str]
    broadcasts: list[str]


_REFUSED: Responses = {
    400: {"model": Problem, "description": "the body is empty: there is no message to keep"},
    409: {"model": CapProblem, "description": "the sender already used this identifier for another message"},
    413: {"model": CapProblem, "description": "the message is over CUNXIANG_CAP_MAX_BYTES"},
    422: {"model": CapProblem, "description": "not a valid CAP 1.2 message we can act on (the reason)"},
    429: {"model": CapProblem, "description": "too many broadcasts from this key in the last minute"},
    503: {"model": Problem, "description": "the controller is shutting down; send it again"},
}
_UNKNOWN: Responses = {404: {"model": Problem, "description": "no such message"}}
_STATUS = {"broadcast": 201, "update": 201, "cancel": 202, "store_only": 202}
_REFUSAL_STATUS = {"rate": 429, "conflict": 409, "too_large": 413}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CapReceipt,
    openapi_extra=_XML_BODY,
    responses={
        200: {"model": CapReceipt, "description": "received before: what became of it then"},
        202: {"model": CapReceipt, "description": "kept, and a cancel carried out, or kept only"},
        **_REFUSED,
    },
)
async def receive_cap(request: Request, who: Operator, controller: ControllerDep) -> JSONResponse:
    """Take in one CAP 1.2 message from an upstream warning system (an API key: people send alerts
    from the console). It is checked (no DTDs or entities, the OASIS schema, the spec's rules),
    mapped (docs/cap.md) within the key's region, and carried out under the same rules as an
    operator's request: the rate limit, and a second person's approval for a live level I or II.

    201: a broadcast, or an update of the one an earlier message made. 202: a cancel carried out, or
    kept only (a draft, a test of the system, not for this county…). 200: the same message again.
    Every message is kept with its outcome (`GET /api/v1/cap/messages`), refused ones too."""
    _machine(who)
    data = await request.body()
    if not data:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the body is empty: send one CAP <alert> document")
    receipt = await controller.cap.receive(data, who)
    content = receipt.model_dump(mode="json")
    if receipt.outcome == "rejected" and not receipt.duplicate:
        code = _REFUSAL_STATUS.get(receipt.refusal or "", 422)
        return JSONResponse({"detail": receipt.reason, "message_id": receipt.message_id}, code)
    return JSONResponse(content, 200 if receipt.duplicate else _STATUS.get(receipt.outcome, 422))


@router.get("/messages", response_model=list[CapMessagePublic])
def cap_messages(
    who: Viewer,
    session: SessionDep,
    outcome: Annotated[str | None, Query(max_length=16, description="broadcast, update, cancel…")] = None,
    sender: Annotated[str | None, Query(max_length=500)] = None,
    before_id: Annotated[int | None, Query(ge=1, description="the next page: older than this")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[CapMessagePublic]:
    """CAP messages received for your region or above it, newest first."""
    return [_public(m) for m in visible_messages(session, who, outcome, sender, before_id, limit)]


def visible_messages(
    session: Session,
    who: Principal,
    outcome: str | None = None,
    sender: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[CapMessage]:
    """The newest messages `who` may see (received for their region, above it or within it)."""
    query = select(CapMessage).order_by(col(CapMessage.id).desc())
    if outcome:
        query = query.where(CapMessage.outcome == outcome)
    if sender:
        query = query.where(CapMessage.sender == sender)
    if before_id is not None:
        query = query.where(col(CapMessage.id) < before_id)
    found: list[CapMessage] = []
    for page in session.exec(query.execution_options(yield_per=200)).partitions():
        for message in page:
            if sees(who, [message.region]):
                found.append(message)
                if len(found) == limit:
                    return found
    return found


@router.get("/messages/{message_id}", response_model=CapMessagePublic, responses=_UNKNOWN)
def cap_message(message_id: int, who: Viewer, session: SessionDep) -> CapMessagePublic:
    """One message's record: who sent it, when, and what became of it."""
    return _public(_visible(who, session.get(CapMessage, message_id), message_id))


@router.get(
    "/messages/{message_id}/raw",
    response_class=Response,
    responses={
        200: {"content": {"application/cap+xml": {"schema": {"type": "string"}}}},
        **_UNKNOWN,
    },
)
def cap_message_raw(message_id: int, who: Viewer, session: SessionDep) -> Response:
    """The message byte for byte as it was received (404 if it was over the size limit and not kept)."""
    message = _visible(who, session.get(CapMessage, message_id), message_id)
    if message.raw is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"CAP message {message_id} was {message.size} bytes, over the limit: its bytes were not kept",
        )
    return Response(message.raw, media_type="application/cap+xml")


def _machine(who: Principal) -> None:
    if who.kind != "api_key":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "CAP messages come from warning systems with an API key; people send alerts from the "
            "console or POST /api/v1/broadcasts, which shows what will happen before it does",
        )


def _visible(who: Principal, message: CapMessage | None, message_id: int) -> CapMessage:
    if message is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no CAP message {message_id}")
    if not sees(who, [message.region]):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"CAP message {message_id} was received for {message.region}"
        )
    return message


def _public(message: CapMessage) -> CapMessagePublic:
    values: dict[str, Any] = message.model_dump(exclude={"raw", "key"})
    return CapMessagePublic(**values, kept=message.raw is not None)
