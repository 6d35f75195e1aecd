"""The Fleet pages: the terminals of the reader's region, filtered and paged, and one terminal's
description, presence history, alarms, last broadcasts and telemetry chart (`static/fleet.js`).

Both read through the API's own functions (`api.routes.terminals`), so a page lists exactly what
`GET /api/v1/terminals` would answer with the same filters, and nothing the reader may not see.
"""

from dataclasses import dataclass
from typing import Any, cast, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session, col, select

from api.console.pages import Reader, ReaderDep
from api.console.rendering import render
from api.deps import ControllerDep, SessionDep
from api.routes.terminals import PresenceFilter, terminal, terminals
from controller.models import Region
from controller.regions import region_names
from controller.terminals import TERMINAL_KINDS
from devices.identifiers import RegionLevel, region_ancestry

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
PRESENCES: tuple[str, ...] = get_args(PresenceFilter)
FAULT_CHOICES = {"true": True, "false": False}


@dataclass(frozen=True)
class Filters:
    """The fleet list's filters as the form sends them: "" is any."""

    region: str
    presence: str
    fault: str
    kind: str
    page: int

    def link(self, page: int) -> str:
        """The list with these filters at another page."""
        chosen = {k: v for k, v in vars(self).items() if v and k != "page"}
        return "/fleet?" + urlencode(chosen | {"page": page})


def _reading(request: Request, template: str, reader: Reader, **context: Any) -> HTMLResponse:
    return render(request, template, who=reader.who, region_name=reader.region_name, **context)


@router.get("/fleet", response_class=HTMLResponse)
def fleet(
    request: Request,
    reader: ReaderDep,
    session: SessionDep,
    controller: ControllerDep,
    region: str = "",
    presence: str = "",
    fault: str = "",
    kind: str = "",
    page: int = 1,
) -> HTMLResponse:
    """The list; its filters reload only the table (htmx selects `#fleet-table` from this page)."""
    filters = Filters(
        region=region if region and reader.who.covers(region) else "",
        presence=presence if presence in PRESENCES else "",
        fault=fault if fault in FAULT_CHOICES else "",
        kind=kind if kind in TERMINAL_KINDS else "",
        page=max(1, page),
    )
    found = terminals(
        who=reader.who,
        session=session,
        controller=controller,
        region=filters.region or None,
        presence=cast(PresenceFilter | None, filters.presence or None),
        fault=FAULT_CHOICES.get(filters.fault),
        kind=filters.kind or None,
        limit=PAGE_SIZE,
        offset=(filters.page - 1) * PAGE_SIZE,
    )
    return _reading(
        request,
        "fleet.html",
        reader,
        filters=filters,
        found=found,
        pages=max(1, -(-found.total // PAGE_SIZE)),
        regions=_regions_to_township(session, reader.who.region),
        names=region_names(session, {item.region for item in found.items}),
        faults={item.id: sorted(controller.alarms.active(item.id)) for item in found.items},
        presences=PRESENCES,
        kinds=TERMINAL_KINDS,
    )


@router.get("/fleet/{terminal_id}", response_class=HTMLResponse)
def terminal_page(
    terminal_id: str, request: Request, reader: ReaderDep, session: SessionDep, controller: ControllerDep
) -> HTMLResponse:
    found = terminal(terminal_id, who=reader.who, session=session, controller=controller)
    ancestry = region_ancestry(found.region)
    names = region_names(session, ancestry)
    places = [(code, names[code]) for code in ancestry if code in names and reader.who.covers(code)]
    return _reading(request, "terminal.html", reader, terminal=found, places=places)


def _regions_to_township(session: Session, code: str) -> list[Region]:
    """The reader's region and every region below it down to townships (villages are too many)."""
    rows = session.exec(
        select(Region).where(col(Region.code).startswith(code)).order_by(col(Region.code))
    ).all()
    return [r for r in rows if r.level != RegionLevel.VILLAGE or r.code == code]
