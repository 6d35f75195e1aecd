"""Administrative regions: a region and the regions directly below it."""

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel
from sqlmodel import select

from api.auth import AUTH_RESPONSES, Problem, Viewer, ensure_covers
from api.deps import ControllerDep, SessionDep
from controller.fleet_health import RegionHealth, region_health
from controller.models import Region

router = APIRouter(
    prefix="/regions",
    tags=["regions"],
    responses={**AUTH_RESPONSES, 404: {"model": Problem, "description": "no such region"}},
)


class RegionPublic(BaseModel):
    code: str
    name: str
    level: str
    parent_code: str | None


class RegionDetail(RegionPublic):
    children: list[RegionPublic]


@router.get("/{code}", response_model=RegionDetail)
def region(code: str, who: Viewer, session: SessionDep) -> RegionDetail:
    """A region within yours and the regions directly below it."""
    ensure_covers(who, code, "the region")
    found = session.get(Region, code)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no region with code {code!r}")
    children = session.exec(select(Region).where(Region.parent_code == code).order_by(Region.code)).all()
    return RegionDetail(
        **found.model_dump(), children=[RegionPublic.model_validate(c.model_dump()) for c in children]
    )


@router.get("/{code}/health", response_model=RegionHealth)
def health(code: str, who: Viewer, session: SessionDep, controller: ControllerDep) -> RegionHealth:
    """Terminals online, offline, lost, unknown, faulty and working, for the region and each region
    below it, and every village under it with no working terminal ("silent villages")."""
    ensure_covers(who, code, "the region")
    found = session.get(Region, code)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no region with code {code!r}")
    return region_health(
        session,
        found,
        presence_of=controller.presence_of,
        faults_of=controller.alarms.active,
        controller_connected=controller.connected,
    )
