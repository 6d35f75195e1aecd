"""Terminal groups: operator-defined targets such as "villages along the Lu Shui river"."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel
from sqlmodel import Session, col, select

from api.auth import (
    AUTH_RESPONSES,
    UNREADABLE,
    Operator,
    Problem,
    Responses,
    Viewer,
    covering,
    ensure_covers,
)
from api.deps import ControllerDep, SessionDep, read
from controller.accounts import Principal
from controller.groups import GROUP_ID_PATTERN, GroupSpec, delete_group, get_group, list_groups, save_group
from controller.models import TerminalGroup
from controller.terminals import terminal_regions

router = APIRouter(prefix="/groups", tags=["groups"], responses=AUTH_RESPONSES)
_UNKNOWN: Responses = {404: {"model": Problem, "description": "no such group"}}

GroupIdPath = Annotated[str, Path(pattern=GROUP_ID_PATTERN, description="lowercase letters, digits, - and _")]


class GroupPublic(BaseModel):
    id: str
    name: str
    description: str | None
    regions: list[str]
    terminals: list[str]
    created_at: datetime
    updated_at: datetime


@router.put(
    "/{group_id}",
    response_model=GroupPublic,
    responses={
        201: {"model": GroupPublic},
        **UNREADABLE,
        422: {"model": Problem, "description": "unknown region or terminal"},
    },
)
async def put_group(
    group_id: GroupIdPath, spec: GroupSpec, who: Operator, controller: ControllerDep, response: Response
) -> TerminalGroup:
    """Create the group (201) or replace it (200). Every region and terminal must exist (else 422)
    and lie within your region (else 403), and so must the group it replaces.

    Broadcasts already sent to the group keep the terminals they were resolved to.
    """
    ensure_covers(who, list(spec.regions), "the group")
    regions = await read(controller, lambda session: _regions_of(session, group_id, spec))
    ensure_covers(who, regions, "the group")
    group, created = await controller.writer.call(lambda session: save_group(session, group_id, spec))
    await controller.record(
        who.audit(
            "group.create" if created else "group.update",
            "group",
            group_id,
            covering(list(spec.regions) + regions, who.region),
            regions=spec.regions,
            terminals=spec.terminals[:100],
        )
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return group


def _regions_of(session: Session, group_id: str, spec: GroupSpec) -> list[str]:
    """The regions of the group's terminals, and of the group it would replace."""
    existing = session.get(TerminalGroup, group_id)
    earlier = (
        (existing.regions + list(terminal_regions(session, existing.terminals).values())) if existing else []
    )
    return earlier + list(terminal_regions(session, list(spec.terminals)).values())


def target_regions(
    session: Session, regions: list[str], groups: list[str], terminals: list[str] | None = None
) -> list[str]:
    """Every region a target reaches: the regions named, its groups' regions, and the regions of
    its groups' and its own single terminals."""
    found = session.exec(select(TerminalGroup).where(col(TerminalGroup.id).in_(groups))).all()
    singles = sorted(set(terminals or []).union(*(group.terminals for group in found)))
    named = [code for group in found for code in group.regions]
    return [*regions, *named, *terminal_regions(session, singles).values()]


def group_regions(session: Session, group: TerminalGroup) -> list[str]:
    """The regions a group reaches: those it names and those of its single terminals."""
    return group.regions + list(terminal_regions(session, group.terminals).values())


def _within(who: Principal, session: Session, group: TerminalGroup) -> bool:
    return all(who.covers(code) for code in group_regions(session, group))


@router.get("", response_model=list[GroupPublic])
def all_groups(who: Viewer, session: SessionDep) -> list[TerminalGroup]:
    """The groups lying within your region."""
    return [group for group in list_groups(session) if _within(who, session, group)]


@router.get("/{group_id}", response_model=GroupPublic, responses=_UNKNOWN)
def one_group(group_id: GroupIdPath, who: Viewer, session: SessionDep) -> TerminalGroup:
    group = get_group(session, group_id)
    ensure_covers(who, group_regions(session, group), f"group {group_id}")
    return group


@router.delete("/{group_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_UNKNOWN)
async def remove_group(group_id: GroupIdPath, who: Operator, controller: ControllerDep) -> None:
    regions = await read(controller, lambda session: group_regions(session, get_group(session, group_id)))
    ensure_covers(who, regions, f"group {group_id}")
    await controller.writer.call(lambda session: delete_group(session, group_id))
    await controller.record(who.audit("group.delete", "group", group_id, covering(regions, who.region)))
