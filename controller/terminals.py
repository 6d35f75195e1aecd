"""Registered terminals: registering them (one by one, in bulk, from CSV), their credentials,
taking them out of service, and listing them."""

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
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
    region: RegionCode = Field(description="the village, township or county code it is installed in")
    kind: Annotated[str, Field(pattern="^(" + "|".join(TERMINAL_KINDS) + ")$")] = "outdoor_speaker"
    name: Annotated[str, Field(max_length=100)] | None = None
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None
    installed_on: date | None = None
    notes: Annotated[str, Field(max_length=1000)] | None = None

    @model_validator(mode="after")
    def _both_coordinates(self) -> Self:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("give both latitude and longitude, or neither")
        return self


class TerminalsRejected(ValueError):
    """Terminals that cannot be registered as given."""


class TerminalNotFound(LookupError):
    """No terminal in service with that id."""


@dataclass(frozen=True)
class Credentials:
    """A terminal's MQTT login; the secret exists only in this answer, never in the database."""

    terminal_id: str
    username: str
    secret: str


@dataclass(frozen=True)
class Registration:
    created: int
    updated: int
    credentials: list[Credentials]
    """for every terminal new (or back in service): its secret, shown once"""


_DESCRIPTION = ("region_code", "kind", "name", "latitude", "longitude", "installed_on", "notes")


def needing_credentials(session: Session, terminal_ids: list[str]) -> set[str]:
    """Those of `terminal_ids` that registering would give credentials: new, or decommissioned."""
    in_service: set[str] = set()
    for start in range(0, len(terminal_ids), 500):
        chunk = terminal_ids[start : start + 500]
        query = select(Terminal.id).where(
            col(Terminal.id).in_(chunk), col(Terminal.decommissioned_at).is_(None)
        )
        in_service.update(session.exec(query).all())
    return set(terminal_ids) - in_service


def register_terminals(
    session: Session, specs: list[TerminalSpec], hashes: dict[str, str], at: datetime
) -> tuple[list[str], int]:
    """Insert new terminals and bring decommissioned ones back into service, each with its secret
    hash from `hashes`; update the description of the others. Returns the ids given credentials
    and how many were updated."""
    ids = [spec.id for spec in specs]
    if len(set(ids)) != len(ids):
        raise TerminalsRejected("the same terminal id appears twice")
    unknown = missing_regions(session, {spec.region for spec in specs})
    if unknown:
        raise TerminalsRejected(f"unknown region code(s): {', '.join(unknown)}")
    existing: dict[str, Terminal] = {}
    for start in range(0, len(ids), 500):
        query = select(Terminal).where(col(Terminal.id).in_(ids[start : start + 500]))
        existing.update((t.id, t) for t in session.exec(query).all())
    issued: list[str] = []
    updated = 0
    for spec in specs:
        values = {"region_code": spec.region} | spec.model_dump(include=set(_DESCRIPTION) - {"region_code"})
        terminal = existing.get(spec.id)
        if terminal is None or terminal.decommissioned_at is not None:
            terminal = terminal or Terminal(id=spec.id, region_code=spec.region)
            terminal.decommissioned_at = None
            if spec.id not in hashes:
                raise TerminalsRejected(
                    f"terminal {spec.id} changed while it was being registered; register again"
                )
            terminal.secret_hash = hashes[spec.id]
            terminal.credentials_issued_at = at
            issued.append(spec.id)
        elif all(getattr(terminal, name) == value for name, value in values.items()):
            continue
        else:
            updated += 1
        for name, value in values.items():
            setattr(terminal, name, value)
        session.add(terminal)
    session.commit()
    return issued, updated


def reissue_credentials(session: Session, terminal_id: str, secret_hash: str, at: datetime) -> None:
    """Replace a terminal's MQTT secret (the old one stops working once the broker's file is updated)."""
    terminal = in_service(session, terminal_id)
    terminal.secret_hash, terminal.credentials_issued_at = secret_hash, at
    session.add(terminal)
    session.commit()


def decommission(session: Session, terminal_id: str, at: datetime) -> None:
    """Take a terminal out of service: no longer targeted, tracked or allowed on the broker; its
    deliveries and history stay. Registering it again brings it back with new credentials."""
    terminal = in_service(session, terminal_id)
    terminal.decommissioned_at, terminal.secret_hash = at, None
    terminal.presence, terminal.presence_since = "unknown", at
    session.add(terminal)
    session.commit()


def in_service(session: Session, terminal_id: str) -> Terminal:
    terminal = session.get(Terminal, terminal_id)
    if terminal is None or terminal.decommissioned_at is not None:
        raise TerminalNotFound(f"no terminal {terminal_id!r} in service")
    return terminal


CSV_COLUMNS = ("id", "region", "kind", "name", "latitude", "longitude", "installed_on", "notes")


def parse_terminals_csv(text: str) -> list[TerminalSpec]:
    """Terminals from CSV with a header row naming some of CSV_COLUMNS (`id` and `region` required).

    Every bad line is reported (line number, column, problem), and then nothing is registered.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [name.strip() for name in reader.fieldnames or []]
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if not {"id", "region"} <= set(header) or unknown:
        raise TerminalsRejected(
            f"the CSV header must name id and region, and only columns among {', '.join(CSV_COLUMNS)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    reader.fieldnames = header
    specs: list[TerminalSpec] = []
    problems: list[str] = []
    for row in reader:
        if None in row:
            problems.append(f"line {reader.line_num}: more fields than the header has")
            continue
        values = {k: v.strip() for k, v in row.items() if v is not None and v.strip() != ""}
        try:
            specs.append(TerminalSpec.model_validate(values))
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"]) or "row"
                problems.append(f"line {reader.line_num}: {where}: {error['msg']}")
    if problems:
        shown = problems[:50] + ([f"and {len(problems) - 50} more problems"] if len(problems) > 50 else [])
        raise TerminalsRejected("; ".join(shown))
    if not specs:
        raise TerminalsRejected("the CSV holds no terminals")
    return specs


def terminal_regions(session: Session, terminal_ids: list[str]) -> dict[str, str]:
    """The region of each of `terminal_ids` that is in service."""
    found: dict[str, str] = {}
    for start in range(0, len(terminal_ids), 500):
        chunk = terminal_ids[start : start + 500]
        query = select(Terminal.id, Terminal.region_code).where(
            col(Terminal.id).in_(chunk), col(Terminal.decommissioned_at).is_(None)
        )
        found.update(session.exec(query).all())
    return found


def all_terminals(session: Session) -> list[Terminal]:
    """Every terminal in service."""
    return list(session.exec(select(Terminal).where(col(Terminal.decommissioned_at).is_(None))).all())


def list_terminals(
    session: Session,
    region: str | None,
    limit: int,
    offset: int,
    kind: str | None = None,
    keep: Callable[[Terminal], bool] | None = None,
) -> tuple[list[Terminal], int]:
    """A page of the terminals in service (within `region`, of `kind`) and how many there are.
    `keep` filters by what only memory knows (presence, open alarms): then every candidate row is
    read and the page cut here, which a county's few thousand terminals afford."""
    query = select(Terminal).where(col(Terminal.decommissioned_at).is_(None))
    count = select(func.count()).select_from(Terminal).where(col(Terminal.decommissioned_at).is_(None))
    if region is not None:
        query = query.where(col(Terminal.region_code).startswith(region))
        count = count.where(col(Terminal.region_code).startswith(region))
    if kind is not None:
        query = query.where(Terminal.kind == kind)
        count = count.where(Terminal.kind == kind)
    if keep is not None:
        kept = [terminal for terminal in session.exec(query.order_by(Terminal.id)) if keep(terminal)]
        return kept[offset : offset + limit], len(kept)
    rows = session.exec(query.order_by(Terminal.id).offset(offset).limit(limit)).all()
    return list(rows), session.exec(count).one()
