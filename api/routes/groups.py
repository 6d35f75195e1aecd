"""Terminal groups: operator-defined targets such as "villages along the Lu Shui river"."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel

from api.deps import ControllerDep, SessionDep
from controller.groups import GROUP_ID_PATTERN, GroupSpec, delete_group, get_group, list_groups, save_group
from controller.models import TerminalGroup

router = APIRouter(prefix="/groups", tags=["groups"])

GroupIdPath = Annotated[str, Path(pattern=GROUP_ID_PATTERN, description="lowercase letters, digits, - and _")]


class GroupPublic(BaseModel):
    id: str
    name: str
    description: str | None
    regions: list[str]
    terminals: list[str]
    created_at: datetime
    updated_at: datetime


@router.put("/{group_id}", response_model=GroupPublic)
async def put_group(
    group_id: GroupIdPath, spec: GroupSpec, controller: ControllerDep, response: Response
) -> TerminalGroup:
    """Create the group (201) or replace it (200). Every region and terminal must exist (else 422).

    Broadcasts already sent to the group keep the terminals they were resolved to.
    """
    group, created = await controller.writer.call(lambda session: save_group(session, group_id, spec))
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return group


@router.get("", response_model=list[GroupPublic])
def all_groups(session: SessionDep) -> list[TerminalGroup]:
    return list_groups(session)


@router.get("/{group_id}", response_model=GroupPublic)
def one_group(group_id: GroupIdPath, session: SessionDep) -> TerminalGroup:
    return get_group(session, group_id)


@router.delete("/{group_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_group(group_id: GroupIdPath, controller: ControllerDep) -> None:
    await controller.writer.call(lambda session: delete_group(session, group_id))
