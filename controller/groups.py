"""Named terminal groups: an operator's own sets of regions and terminals, used as broadcast targets.

A group names regions (any level: a whole township, or single villages) and single terminals. A
broadcast to a group is resolved to terminals when it is accepted and recorded with them, so
editing or deleting a group later never changes what an earlier broadcast reached.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, select

from controller.models import TerminalGroup
from controller.regions import missing_regions
from controller.terminals import terminal_regions
from devices.messages import RegionCode, TerminalId, now_utc

GROUP_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
GroupId = Annotated[str, Field(pattern=GROUP_ID_PATTERN)]
MAX_GROUP_TERMINALS = 10_000


class GroupSpec(BaseModel):
    """A group as an operator writes it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=100)]
    description: Annotated[str, Field(max_length=1000)] | None = None
    regions: Annotated[list[RegionCode], Field(max_length=2000)] = []
    terminals: Annotated[list[TerminalId], Field(max_length=MAX_GROUP_TERMINALS)] = []

    @model_validator(mode="after")
    def _not_empty(self) -> "GroupSpec":
        if not self.regions and not self.terminals:
            raise ValueError("a group needs at least one region or terminal")
        return self


class GroupRejected(ValueError):
    """A group that names regions or terminals that do not exist."""


class GroupNotFound(LookupError):
    """No group with that id."""


def save_group(session: Session, group_id: str, spec: GroupSpec) -> tuple[TerminalGroup, bool]:
    """Create or replace a group; returns it and whether it is new."""
    regions = sorted(set(spec.regions))
    terminals = sorted(set(spec.terminals))
    unknown = missing_regions(session, regions)
    if unknown:
        raise GroupRejected(f"unknown region code(s): {', '.join(unknown)}")
    known = terminal_regions(session, terminals)
    missing = [t for t in terminals if t not in known]
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise GroupRejected(f"unknown terminal(s): {shown}")
    group = session.get(TerminalGroup, group_id)
    created = group is None
    if group is None:
        group = TerminalGroup(id=group_id, name=spec.name, regions=regions, terminals=terminals)
    group.name, group.description = spec.name, spec.description
    group.regions, group.terminals = regions, terminals
    group.updated_at = now_utc()
    session.add(group)
    session.commit()
    session.refresh(group)
    return group, created


def get_group(session: Session, group_id: str) -> TerminalGroup:
    group = session.get(TerminalGroup, group_id)
    if group is None:
        raise GroupNotFound(f"no group {group_id!r}")
    return group


def list_groups(session: Session) -> list[TerminalGroup]:
    return list(session.exec(select(TerminalGroup).order_by(TerminalGroup.id)).all())


def delete_group(session: Session, group_id: str) -> None:
    session.delete(get_group(session, group_id))
    session.commit()
