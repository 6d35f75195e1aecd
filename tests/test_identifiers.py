"""Terminal ids and administrative region codes (devices/identifiers.py)."""

import pytest

from devices.identifiers import (
    RegionLevel,
    child_code_length,
    is_region_code,
    is_terminal_id,
    region_ancestry,
    region_level,
)

MALFORMED_REGION_CODES = [
    "",
    "4",
    "421",
    "42120",
    "4212020",
    "42120200",
    "4212020010",
    "42120200100",
    "4212020010021",
    "42a2",
    "42-2",
    " 42",
    "42 ",
    "+421",
    "4212.0",
]


@pytest.mark.parametrize(
    ("code", "level"),
    [
        ("42", RegionLevel.PROVINCE),
        ("4212", RegionLevel.CITY),
        ("421202", RegionLevel.COUNTY),
        ("421202001", RegionLevel.TOWNSHIP),
        ("421202001002", RegionLevel.VILLAGE),
    ],
)
def test_region_level_is_given_by_code_length(code: str, level: RegionLevel) -> None:
    assert region_level(code) is level


def test_region_ancestry_of_village_lists_every_enclosing_region_widest_first() -> None:
    assert region_ancestry("421202001002") == ["42", "4212", "421202", "421202001", "421202001002"]


@pytest.mark.parametrize(
    ("code", "ancestry"),
    [
        ("42", ["42"]),
        ("4212", ["42", "4212"]),
        ("421202", ["42", "4212", "421202"]),
        ("421202001", ["42", "4212", "421202", "421202001"]),
    ],
)
def test_region_ancestry_of_wider_code_stops_at_the_code_itself(code: str, ancestry: list[str]) -> None:
    assert region_ancestry(code) == ancestry


@pytest.mark.parametrize("code", MALFORMED_REGION_CODES)
def test_is_region_code_is_false_for_malformed_code(code: str) -> None:
    assert not is_region_code(code)


@pytest.mark.parametrize("code", MALFORMED_REGION_CODES)
def test_region_level_raises_value_error_for_malformed_code(code: str) -> None:
    with pytest.raises(ValueError, match="not a region code"):
        region_level(code)


@pytest.mark.parametrize("code", MALFORMED_REGION_CODES)
def test_region_ancestry_raises_value_error_for_malformed_code(code: str) -> None:
    with pytest.raises(ValueError, match="not a region code"):
        region_ancestry(code)


@pytest.mark.parametrize("code", MALFORMED_REGION_CODES)
def test_child_code_length_raises_value_error_for_malformed_code(code: str) -> None:
    with pytest.raises(ValueError, match="not a region code"):
        child_code_length(code)


def test_is_region_code_is_false_for_code_with_trailing_newline() -> None:
    assert not is_region_code("421202\n")


def test_region_level_raises_value_error_for_code_with_trailing_newline() -> None:
    with pytest.raises(ValueError):
        region_level("42\n")


@pytest.mark.parametrize("code", ["４２１２", "٤٢"], ids=["fullwidth", "arabic-indic"])
def test_is_region_code_is_false_for_non_ascii_digits(code: str) -> None:
    assert not is_region_code(code)


@pytest.mark.parametrize(
    ("code", "length"),
    [("42", 4), ("4212", 6), ("421202", 9), ("421202001", 12), ("421202001002", None)],
)
def test_child_code_length_is_the_next_level_down_or_none_for_a_village(
    code: str, length: int | None
) -> None:
    assert child_code_length(code) == length


@pytest.mark.parametrize(
    "terminal_id",
    ["a", "0", "t1", "t-421202001002-01", "a--b", "9lives", "a" * 64],
)
def test_is_terminal_id_accepts_lowercase_digits_and_inner_hyphens(terminal_id: str) -> None:
    assert is_terminal_id(terminal_id)


@pytest.mark.parametrize(
    "terminal_id",
    [
        pytest.param("", id="empty"),
        pytest.param("T1", id="uppercase"),
        pytest.param("-t1", id="leading-hyphen"),
        pytest.param("t1-", id="trailing-hyphen"),
        pytest.param("-", id="only-hyphen"),
        pytest.param("a" * 65, id="65-characters"),
        pytest.param("t_1", id="underscore"),
        pytest.param("t.1", id="dot"),
        pytest.param("t 1", id="space"),
        pytest.param("t/1", id="slash"),
        pytest.param("+", id="mqtt-single-level-wildcard"),
        pytest.param("#", id="mqtt-multi-level-wildcard"),
        pytest.param("tä", id="non-ascii-letter"),
    ],
)
def test_is_terminal_id_rejects_malformed_id(terminal_id: str) -> None:
    assert not is_terminal_id(terminal_id)


def test_is_terminal_id_rejects_id_with_trailing_newline() -> None:
    assert not is_terminal_id("t1\n")
