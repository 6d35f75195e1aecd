"""Identifiers that appear in topics: terminal ids and administrative region codes."""

import re
from enum import StrEnum

# ASCII only ([0-9], not \d, which also matches full-width and other scripts' digits); used with
# fullmatch, so a trailing newline is not accepted either.
TERMINAL_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
REGION_CODE_PATTERN = r"^(?:[0-9]{2}|[0-9]{4}|[0-9]{6}|[0-9]{9}|[0-9]{12})$"

_TERMINAL_ID = re.compile(TERMINAL_ID_PATTERN)
_REGION_CODE = re.compile(REGION_CODE_PATTERN)


class RegionLevel(StrEnum):
    """Administrative levels, from the widest; a code's length tells its level."""

    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"
    VILLAGE = "village"


_LEVEL_BY_LENGTH = {
    2: RegionLevel.PROVINCE,
    4: RegionLevel.CITY,
    6: RegionLevel.COUNTY,
    9: RegionLevel.TOWNSHIP,
    12: RegionLevel.VILLAGE,
}
_CODE_LENGTHS = sorted(_LEVEL_BY_LENGTH)


def is_terminal_id(value: str) -> bool:
    """Homie-style ids: lowercase letters, digits and inner hyphens, at most 64 characters."""
    return _TERMINAL_ID.fullmatch(value) is not None


def is_region_code(value: str) -> bool:
    """National statistical division codes: 2, 4, 6, 9 or 12 digits (province to village)."""
    return _REGION_CODE.fullmatch(value) is not None


def region_level(code: str) -> RegionLevel:
    """The administrative level of a code; raises ValueError for a malformed one."""
    if not is_region_code(code):
        raise ValueError(f"not a region code: {code!r}")
    return _LEVEL_BY_LENGTH[len(code)]


def region_ancestry(code: str) -> list[str]:
    """The code and every wider region containing it, widest first.

    Codes are hierarchical prefixes (village 421202001002 lies in township 421202001, county
    421202, city 4212, province 42), so the ancestry is a list of prefixes.
    """
    region_level(code)
    return [code[:n] for n in _CODE_LENGTHS if n <= len(code)]


def child_code_length(code: str) -> int | None:
    """The length of the codes one level below `code`, or None for a village."""
    region_level(code)
    longer = [n for n in _CODE_LENGTHS if n > len(code)]
    return longer[0] if longer else None
