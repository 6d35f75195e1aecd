"""Administrative regions: a region and the regions directly below it."""

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel
from sqlmodel import select

from api.deps import SessionDep
from controller.models import Region

router = APIRouter(prefix="/regions", tags=["regions"])


class RegionPublic(BaseModel):
    code: str
    name: str
    level: str
    parent_code: str | None


class RegionDetail(RegionPublic):
    children: list[RegionPublic]


@router.get("/{code}", response_model=RegionDetail)
def region(code: str, session: SessionDep) -> RegionDetail:
    found = session.get(Region, code)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no region with code {code!r}")
    children = session.exec(select(Region).where(Region.parent_code == code).order_by(Region.code)).all()
    return RegionDetail(
        **found.model_dump(), children=[RegionPublic.model_validate(c.model_dump()) for c in children]
    )
