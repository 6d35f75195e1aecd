"""Administrative regions: loading a divisions CSV and answering questions about the tree."""

import csv
import io
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from controller.models import Region
from devices.identifiers import RegionLevel, is_region_code, region_level

BUNDLED_DIVISIONS = "xianning_divisions.csv"
CSV_COLUMNS = ("code", "name", "level", "parent_code")


class DivisionsError(ValueError):
    """A divisions CSV that cannot be loaded; the message names the line."""


def bundled_divisions() -> str:
    """The real divisions of 咸宁市 shipped with Cunxiang (see controller/data/*.SOURCE.md)."""
    return resources.files("controller").joinpath("data", BUNDLED_DIVISIONS).read_text(encoding="utf-8")


def parse_divisions(text: str) -> list[Region]:
    """Parse `code,name,level,parent_code` rows; every code must be well-formed and match its level."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise DivisionsError(f"expected header {','.join(CSV_COLUMNS)}, got {reader.fieldnames}")
    regions = []
    for line, row in enumerate(reader, start=2):
        code, name, level, parent = (row[c].strip() if row[c] else "" for c in CSV_COLUMNS)
        if not is_region_code(code):
            raise DivisionsError(f"line {line}: {code!r} is not a 2/4/6/9/12-digit division code")
        if level not in RegionLevel.__members__.values() or region_level(code) != level:
            raise DivisionsError(f"line {line}: level {level!r} does not match code {code}")
        if parent and not code.startswith(parent):
            raise DivisionsError(f"line {line}: {code} does not lie within parent {parent}")
        if not name:
            raise DivisionsError(f"line {line}: region {code} has no name")
        regions.append(Region(code=code, name=name, level=level, parent_code=parent or None))
    return regions


def upsert_regions(session: Session, regions: Iterable[Region]) -> int:
    """Insert or rename regions; returns how many rows were written."""
    existing = {r.code: r for r in session.exec(select(Region)).all()}
    written = 0
    for region in regions:
        current = existing.get(region.code)
        if current is None:
            session.add(region)
        elif (current.name, current.level, current.parent_code) != (
            region.name,
            region.level,
            region.parent_code,
        ):
            current.name, current.level, current.parent_code = region.name, region.level, region.parent_code
        else:
            continue
        written += 1
    session.commit()
    return written


def load_divisions_file(session: Session, path: Path) -> int:
    return upsert_regions(session, parse_divisions(path.read_text(encoding="utf-8")))


def ensure_bundled_regions(session: Session) -> int:
    """Load the bundled divisions into an empty region table; leave a populated one alone."""
    if session.exec(select(func.count()).select_from(Region)).one():
        return 0
    return upsert_regions(session, parse_divisions(bundled_divisions()))


def missing_regions(session: Session, codes: Iterable[str]) -> list[str]:
    wanted = sorted(set(codes))
    found = set(session.exec(select(Region.code).where(col(Region.code).in_(wanted))).all())
    return [code for code in wanted if code not in found]


def region_names(session: Session, codes: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(codes))
    rows = session.exec(select(Region.code, Region.name).where(col(Region.code).in_(wanted))).all()
    return dict(rows)


def villages_under(session: Session, code: str) -> list[Region]:
    return list(
        session.exec(
            select(Region)
            .where(col(Region.code).startswith(code), Region.level == RegionLevel.VILLAGE.value)
            .order_by(Region.code)
        ).all()
    )
