"""The Map page: the reader's terminals drawn where they stand, coloured by presence, ringed when
they have an open alarm, with the silent villages shaded and listed.

It must work with no network beyond the controller (no tile server): the map is an inline SVG drawn
here from the terminals' registered latitude and longitude, projected equirectangularly with the
longitude shrunk by cos(latitude), which is accurate enough across a county. Terminals without a
position are counted and listed, not drawn. htmx fetches the drawing again every 10 s.
"""

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from api.console.pages import Reader, ReaderDep
from api.console.rendering import render
from api.deps import ControllerDep, SessionDep
from controller.alarms import Fault
from controller.fleet_health import RegionHealth, region_health
from controller.models import Region, Terminal
from controller.regions import region_names
from controller.service import Controller
from controller.terminals import list_terminals
from simulator.fleet import SIMULATED_PREFIX

router = APIRouter(include_in_schema=False)

WIDTH, HEIGHT, MARGIN = 800, 560, 24
EVERY_TERMINAL = 1_000_000
REFRESH_S = 10
Point = tuple[float, float]


@dataclass(frozen=True)
class Mark:
    """A terminal on the map."""

    terminal_id: str
    village_code: str
    village: str
    x: float
    y: float
    presence: str
    faults: list[Fault]


@dataclass(frozen=True)
class Halo:
    """A silent village's shaded area around its terminals."""

    code: str
    name: str
    x: float
    y: float
    r: float


@dataclass(frozen=True)
class Unplaced:
    terminal_id: str
    village: str
    presence: str


@dataclass(frozen=True)
class MapView:
    marks: list[Mark]
    halos: list[Halo]
    unplaced: list[Unplaced]
    counts: Counter[str]
    """terminals per presence, and `fault` for those with an open alarm"""
    health: RegionHealth
    synthetic: bool
    """some positions are the simulator's invention"""


def projection(points: Iterable[Point]) -> Callable[[float, float], Point]:
    """(latitude, longitude) → (x, y) in the WIDTH × HEIGHT drawing, fitting every point with the
    same scale on both axes (north up)."""
    listed = list(points)
    if not listed:
        return lambda _lat, _lon: (WIDTH / 2, HEIGHT / 2)
    middle = math.cos(math.radians(sum(lat for lat, _ in listed) / len(listed)))
    xs = [lon * middle for _, lon in listed]
    ys = [lat for lat, _ in listed]
    span_x, span_y = max(xs) - min(xs), max(ys) - min(ys)
    scale = min(
        (WIDTH - 2 * MARGIN) / span_x if span_x else math.inf,
        (HEIGHT - 2 * MARGIN) / span_y if span_y else math.inf,
    )
    scale = 1.0 if scale == math.inf else scale
    # centred: the unused width or height is split on both sides
    left = (WIDTH - span_x * scale) / 2 - min(xs) * scale
    top = (HEIGHT - span_y * scale) / 2 + max(ys) * scale
    return lambda lat, lon: (round(left + lon * middle * scale, 1), round(top - lat * scale, 1))


def map_view(session: Session, controller: Controller, region: Region) -> MapView:
    """Everything the map draws for `region`, from the same sources as the region-health API."""
    terminals, _ = list_terminals(session, region.code, EVERY_TERMINAL, 0)
    health = region_health(
        session,
        region,
        presence_of=controller.presence_of,
        faults_of=controller.alarms.active,
        controller_connected=controller.connected,
    )
    names = region_names(session, {t.region_code for t in terminals})
    placed = [t for t in terminals if t.latitude is not None and t.longitude is not None]
    where = projection(_position(t) for t in placed)
    counts: Counter[str] = Counter()
    marks, unplaced = [], []
    for terminal in terminals:
        presence, faults = controller.presence_of(terminal.id), sorted(controller.alarms.active(terminal.id))
        counts[presence] += 1
        counts["fault"] += bool(faults)
        village = names.get(terminal.region_code, terminal.region_code)
        if terminal.latitude is None or terminal.longitude is None:
            unplaced.append(Unplaced(terminal.id, village, presence))
            continue
        x, y = where(*_position(terminal))
        marks.append(Mark(terminal.id, terminal.region_code, village, x, y, presence, faults))
    return MapView(
        marks=marks,
        halos=_halos(health, marks),
        unplaced=unplaced,
        counts=counts,
        health=health,
        synthetic=any(t.id.startswith(SIMULATED_PREFIX) for t in placed),
    )


def _position(terminal: Terminal) -> Point:
    assert terminal.latitude is not None and terminal.longitude is not None
    return terminal.latitude, terminal.longitude


def _halos(health: RegionHealth, marks: list[Mark]) -> list[Halo]:
    """A circle around the drawn terminals of each silent village."""
    silent = {v.code: v.name for v in health.silent_villages}
    grouped: dict[str, list[Mark]] = {}
    for mark in marks:
        if mark.village_code in silent:
            grouped.setdefault(mark.village_code, []).append(mark)
    halos = []
    for code, members in grouped.items():
        x = sum(m.x for m in members) / len(members)
        y = sum(m.y for m in members) / len(members)
        r = max(math.hypot(m.x - x, m.y - y) for m in members) + 14
        halos.append(Halo(code, silent[code], round(x, 1), round(y, 1), round(r, 1)))
    return halos


def _drawing(
    request: Request, template: str, reader: Reader, session: Session, controller: Controller
) -> HTMLResponse:
    region = session.get(Region, reader.who.region)
    assert region is not None, "an account's region always exists (a foreign key)"
    return render(
        request,
        template,
        who=reader.who,
        region_name=reader.region_name,
        view=map_view(session, controller, region),
        width=WIDTH,
        height=HEIGHT,
        refresh_s=REFRESH_S,
    )


@router.get("/map", response_class=HTMLResponse)
def map_page(
    request: Request, reader: ReaderDep, session: SessionDep, controller: ControllerDep
) -> HTMLResponse:
    return _drawing(request, "map.html", reader, session, controller)


@router.get("/map/view", response_class=HTMLResponse)
def map_fragment(
    request: Request, reader: ReaderDep, session: SessionDep, controller: ControllerDep
) -> HTMLResponse:
    """The drawing, legend and lists alone, for htmx's refresh."""
    return _drawing(request, "map_view.html", reader, session, controller)
