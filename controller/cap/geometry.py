"""Which terminals lie inside a CAP area's polygons and circles.

Pure functions over (terminal id, latitude, longitude), so the caller decides where positions come
from (the terminal table, a test grid). CAP writes points as "latitude,longitude" (WGS 84) — the
opposite of GeoJSON's order — and the parsed model keeps that order: every point here is (lat, lon).
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

EARTH_RADIUS_KM = 6371.0088
"""the mean radius (IUGG), as CAP circles are in kilometres on the WGS 84 ellipsoid"""

Point = tuple[float, float]
"""(latitude, longitude) in degrees"""


@dataclass(frozen=True)
class TerminalPosition:
    """Where a terminal stands; terminals without a known position are not passed in."""

    terminal_id: str
    latitude: float
    longitude: float


def in_polygon(point: Point, ring: Sequence[Point]) -> bool:
    """Whether `point` lies inside or on the edge of the closed `ring` (either winding order).

    Ray casting along the latitude; a point on an edge or a vertex counts as inside, because a
    loudspeaker on the boundary of a warned area should warn rather than stay silent. The ring
    is treated as planar in degrees, which is how CAP producers draw warning polygons.
    """
    lat, lon = point
    inside = False
    count = len(ring)
    for i in range(count):
        lat1, lon1 = ring[i]
        lat2, lon2 = ring[(i + 1) % count]
        if _on_segment(point, (lat1, lon1), (lat2, lon2)):
            return True
        if (lat1 > lat) != (lat2 > lat):
            crossing_lon = lon1 + (lat - lat1) * (lon2 - lon1) / (lat2 - lat1)
            if lon < crossing_lon:
                inside = not inside
    return inside


def _on_segment(point: Point, a: Point, b: Point) -> bool:
    # Tolerance for floating-point coordinates: about a millimetre in degrees.
    epsilon = 1e-9
    cross = (b[0] - a[0]) * (point[1] - a[1]) - (b[1] - a[1]) * (point[0] - a[0])
    if abs(cross) > epsilon:
        return False
    return (
        min(a[0], b[0]) - epsilon <= point[0] <= max(a[0], b[0]) + epsilon
        and min(a[1], b[1]) - epsilon <= point[1] <= max(a[1], b[1]) + epsilon
    )


def distance_km(a: Point, b: Point) -> float:
    """Great-circle distance by the haversine formula."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def in_circle(point: Point, centre: Point, radius_km: float) -> bool:
    """Whether `point` lies within `radius_km` of `centre` (a radius of 0 is the centre alone)."""
    return distance_km(point, centre) <= radius_km + 1e-9


def terminals_in(
    terminals: Iterable[TerminalPosition],
    polygons: Sequence[Sequence[Point]],
    circles: Sequence[tuple[Point, float]],
) -> list[str]:
    """The ids of the terminals inside any of the polygons or circles, in the order given."""
    found = []
    for terminal in terminals:
        point = (terminal.latitude, terminal.longitude)
        if any(in_polygon(point, ring) for ring in polygons) or any(
            in_circle(point, centre, radius) for centre, radius in circles
        ):
            found.append(terminal.terminal_id)
    return found
