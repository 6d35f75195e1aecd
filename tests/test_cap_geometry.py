"""Polygons and circles select the terminals inside them, CAP's latitude-first order respected."""

import pytest

from controller.cap.geometry import TerminalPosition, distance_km, in_circle, in_polygon, terminals_in

# A square around 咸宁 (29.8-30.0 N, 114.2-114.4 E), as CAP writes it: "lat,lon" pairs, closed.
SQUARE_CW = [(30.0, 114.2), (30.0, 114.4), (29.8, 114.4), (29.8, 114.2), (30.0, 114.2)]
SQUARE_CCW = list(reversed(SQUARE_CW))

# A 5 x 5 grid of terminals 0.1° apart from (29.7, 114.1): the middle 3 x 3 lie in or on the square.
GRID = [
    TerminalPosition(f"t-{row}-{col}", round(29.7 + 0.1 * row, 1), round(114.1 + 0.1 * col, 1))
    for row in range(5)
    for col in range(5)
]
INSIDE_OR_ON = [f"t-{row}-{col}" for row in (1, 2, 3) for col in (1, 2, 3)]


@pytest.mark.parametrize("ring", [SQUARE_CW, SQUARE_CCW], ids=["clockwise", "counter-clockwise"])
def test_a_polygon_selects_the_grid_terminals_inside_or_on_its_edge_in_either_winding(
    ring: list[tuple[float, float]],
) -> None:
    assert terminals_in(GRID, [ring], []) == INSIDE_OR_ON


def test_a_terminal_exactly_on_an_edge_or_a_vertex_is_inside() -> None:
    assert in_polygon((29.9, 114.4), SQUARE_CW)  # on the eastern edge
    assert in_polygon((30.0, 114.2), SQUARE_CW)  # on a vertex
    assert not in_polygon((29.9, 114.4000001), SQUARE_CW)


def test_latitude_comes_first_so_swapped_coordinates_select_nothing() -> None:
    swapped = [(lon, lat) for lat, lon in SQUARE_CW]  # GeoJSON order by mistake: a square off the globe

    assert terminals_in(GRID, [swapped], []) == []


def test_a_concave_polygon_leaves_its_notch_out() -> None:
    # A U shape: the notch between its arms (29.9, 114.3) is outside.
    u_shape = [
        (30.0, 114.2),
        (30.0, 114.25),
        (29.85, 114.25),
        (29.85, 114.35),
        (30.0, 114.35),
        (30.0, 114.4),
        (29.8, 114.4),
        (29.8, 114.2),
        (30.0, 114.2),
    ]

    assert not in_polygon((29.9, 114.3), u_shape)
    assert in_polygon((29.9, 114.22), u_shape)
    assert in_polygon((29.82, 114.3), u_shape)


def test_a_circle_selects_by_great_circle_distance_in_kilometres() -> None:
    centre = (29.9, 114.3)
    # 0.1° of latitude is about 11.1 km; of longitude at 29.9° N about 9.6 km.
    assert round(distance_km(centre, (30.0, 114.3)), 1) == 11.1
    assert round(distance_km(centre, (29.9, 114.4)), 1) == 9.6

    assert terminals_in(GRID, [], [(centre, 10.0)]) == ["t-2-1", "t-2-2", "t-2-3"]
    assert terminals_in(GRID, [], [(centre, 12.0)]) == ["t-1-2", "t-2-1", "t-2-2", "t-2-3", "t-3-2"]


def test_a_circle_of_radius_zero_is_its_centre_alone() -> None:
    assert in_circle((29.9, 114.3), (29.9, 114.3), 0)
    assert not in_circle((29.9001, 114.3), (29.9, 114.3), 0)


def test_shapes_add_up_and_each_terminal_is_named_once() -> None:
    selected = terminals_in(GRID, [SQUARE_CW, SQUARE_CCW], [((29.7, 114.1), 1.0)])

    assert selected == ["t-0-0", *INSIDE_OR_ON]
