"""Registered terminals: registering them and listing them."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func
from sqlmodel import Session, col, select

from controller.models import Terminal
from controller.regions import missing_regions
from devices.messages import RegionCode, TerminalId

TERMINAL_KINDS = ("outdoor_speaker", "indoor_receiver", "ip_column_speaker", "fm_relay")


class TerminalSpec(BaseModel):
    """A terminal to register: where it is and what it is."""

    model_config = ConfigDict(extra="forbid")

    id: TerminalId
    region: RegionCode
    kind: Annotated[str, Field(pattern="^(" + "|".join(TERMINAL_KINDS) + ")$")] = "outdoor_speaker"
    name: Annotated[str, Field(max_length=100)] | None = None


class TerminalsRejected(ValueError):
    """Terminals that cannot be registered as given."""


def register_terminals(session: Session, specs: list[TerminalSpec]) -> tuple[int, int]:
    """Insert new terminals and move/rename known ones; returns (created, updated)."""
    ids = [spec.id for spec in specs]
    if len(set(ids)) != len(ids):
        raise TerminalsRejected("the same terminal id appears twice")
    unknown = missing_regions(session, {spec.region for spec in specs})
    if unknown:
        raise TerminalsRejected(f"unknown region code(s): {', '.join(unknown)}")
    existing = {t.id: t for t in session.exec(select(Terminal).where(col(Terminal.id).in_(ids))).all()}
    created = updated = 0
    for spec in specs:
        terminal = existing.get(spec.id)
        if terminal is None:
            session.add(Terminal(id=spec.id, region_code=spec.region, kind=spec.kind, name=spec.name))
            created += 1
        elif (terminal.region_code, terminal.kind, terminal.name) != (spec.region, spec.kind, spec.name):
            terminal.region_code, terminal.kind, terminal.name = spec.region, spec.kind, spec.name
            updated += 1
    session.commit()
    return created, updated


def terminal_regions(session: Session, terminal_ids: list[str]) -> dict[str, str]:
    """The region of each of `terminal_ids` that is registered."""
    found: dict[str, str] = {}
    for start in range(0, len(terminal_ids), 500):
        chunk = terminal_ids[start : start + 500]
        found.update(
            session.exec(select(Terminal.id, Terminal.region_code).where(col(Terminal.id).in_(chunk))).all()
        )
    return found


def all_terminals(session: Session) -> list[Terminal]:
    return list(session.exec(select(Terminal)).all())


def list_terminals(
    session: Session, region: str | None, limit: int, offset: int
) -> tuple[list[Terminal], int]:
    query = select(Terminal)
    count = select(func.count()).select_from(Terminal)
    if region is not None:
        query = query.where(col(Terminal.region_code).startswith(region))
        count = count.where(col(Terminal.region_code).startswith(region))
    rows = session.exec(query.order_by(Terminal.id).offset(offset).limit(limit)).all()
    return list(rows), session.exec(count).one()
