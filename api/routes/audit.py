"""The audit trail: who did what, when and from where, searchable, and its integrity check."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.auth import AUTH_RESPONSES, Admin, Approver
from api.deps import ControllerDep, read
from controller.audit import search, verify

router = APIRouter(prefix="/audit", tags=["audit"], responses=AUTH_RESPONSES)


class AuditRecordPublic(BaseModel):
    seq: int
    at: datetime
    actor: str
    actor_region: str | None
    source: str | None
    action: str
    outcome: str
    object_type: str | None
    object_id: str | None
    region: str | None
    detail: dict[str, Any]
    hash: str


class Integrity(BaseModel):
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    problems: list[str]


@router.get("", response_model=list[AuditRecordPublic])
async def audit_trail(
    who: Approver,
    controller: ControllerDep,
    actor: Annotated[str | None, Query(max_length=100)] = None,
    action: Annotated[str | None, Query(max_length=64, description="a prefix: `broadcast.` for all")] = None,
    object_id: Annotated[str | None, Query(max_length=128)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    text: Annotated[str | None, Query(max_length=200, description="found anywhere in the record")] = None,
    before_seq: Annotated[int | None, Query(ge=1, description="the next page: older than this")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Any]:
    """Records about your region and below, newest first. Records about no region (a failed
    sign-in with an unknown name) are shown to those over the whole county."""
    regions = None if who.covers(controller.settings.county_region) else [who.region]
    return await read(
        controller,
        lambda session: search(
            session,
            actor=actor,
            action=action,
            object_id=object_id,
            regions=regions,
            since=since,
            until=until,
            text=text,
            before_seq=before_seq,
            limit=limit,
        ),
    )


@router.get("/verify", response_model=Integrity)
async def verify_trail(who: Admin, controller: ControllerDep) -> Integrity:
    """Walk the whole chain: any record edited, removed or inserted since is named (as
    `cunxiang audit verify` does). Note the head down elsewhere to check it later."""
    found = await read(controller, verify)
    return Integrity(**vars(found))
