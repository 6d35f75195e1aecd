"""A region's terminals at a glance: presence and faults per child region, and the villages that
would not hear an alert now ("silent villages")."""

from collections.abc import Callable

from pydantic import BaseModel
from sqlmodel import Session, col, select

from controller.alarms import SILENCING, Fault
from controller.models import Region, Terminal
from controller.regions import region_names, villages_under
from devices.identifiers import child_code_length
from devices.messages import Presence


class HealthCounts(BaseModel):
    terminals: int = 0
    online: int = 0
    offline: int = 0
    lost: int = 0
    unknown: int = 0
    faulty: int = 0
    """with a fault that keeps them silent (speaker, amplifier), whatever their presence"""
    warnings: int = 0
    """with only other alarms (on battery, weak signal, hot)"""
    working: int = 0
    """online and without a silencing fault: would play an alert now"""


class ChildHealth(HealthCounts):
    code: str
    name: str | None


class SilentVillage(BaseModel):
    code: str
    name: str
    township: str | None
    township_name: str | None
    terminals: int
    why: str


class RegionHealth(BaseModel):
    code: str
    name: str
    controller_connected: bool
    totals: HealthCounts
    children: list[ChildHealth]
    silent_villages: list[SilentVillage]


def region_health(
    session: Session,
    region: Region,
    presence_of: Callable[[str], str],
    faults_of: Callable[[str], set[Fault]],
    controller_connected: bool,
) -> RegionHealth:
    """Counts for `region` and each region directly below it, and its silent villages.

    While the controller is cut off from the broker every presence is `unknown`, so nothing counts
    as working and every village is listed: the answer says so (`controller_connected`).
    """
    terminals = session.exec(
        select(Terminal.id, Terminal.region_code).where(
            col(Terminal.region_code).startswith(region.code), col(Terminal.decommissioned_at).is_(None)
        )
    ).all()
    length = child_code_length(region.code)
    children = {
        r.code: ChildHealth(code=r.code, name=r.name)
        for r in session.exec(select(Region).where(Region.parent_code == region.code).order_by(Region.code))
    }
    totals = HealthCounts()
    per_region: dict[str, HealthCounts] = {}
    for terminal_id, region_code in terminals:
        presence, faults = presence_of(terminal_id), faults_of(terminal_id)
        buckets = [totals, per_region.setdefault(region_code, HealthCounts())]
        if length is not None and region_code[:length] in children:
            buckets.append(children[region_code[:length]])
        for counts in buckets:
            _count(counts, presence, faults)
    return RegionHealth(
        code=region.code,
        name=region.name,
        controller_connected=controller_connected,
        totals=totals,
        children=list(children.values()),
        silent_villages=_silent_villages(session, region.code, per_region, controller_connected),
    )


def _count(counts: HealthCounts, presence: str, faults: set[Fault]) -> None:
    counts.terminals += 1
    setattr(counts, presence, getattr(counts, presence) + 1)
    silenced = bool(faults & SILENCING)
    counts.faulty += silenced
    counts.warnings += bool(faults) and not silenced
    counts.working += presence == Presence.ONLINE and not silenced


def _silent_villages(
    session: Session, code: str, per_region: dict[str, HealthCounts], controller_connected: bool
) -> list[SilentVillage]:
    none = HealthCounts()
    villages = [v for v in villages_under(session, code) if per_region.get(v.code, none).working == 0]
    townships = region_names(session, {v.parent_code for v in villages if v.parent_code})
    silent = []
    for village in villages:
        counts = per_region.get(village.code, HealthCounts())
        silent.append(
            SilentVillage(
                code=village.code,
                name=village.name,
                township=village.parent_code,
                township_name=townships.get(village.parent_code or ""),
                terminals=counts.terminals,
                why=_why_silent(counts, controller_connected),
            )
        )
    return silent


def _why_silent(counts: HealthCounts, controller_connected: bool) -> str:
    if counts.terminals == 0:
        return "no terminal registered"
    if not controller_connected:
        return "unknown: the controller is cut off from the MQTT broker"
    parts = [
        f"{n} {label}"
        for n, label in (
            (counts.offline, "offline"),
            (counts.lost, "connection lost"),
            (counts.unknown, "never connected"),
            (counts.faulty, "with a speaker or amplifier fault"),
        )
        if n
    ]
    return ", ".join(parts)
