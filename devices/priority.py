"""Who wins a loudspeaker: the priority rule shared by the controller and every terminal.

Emergency level I > II > III > IV > notice > programme; among equals, the wider administrative
level that issued the command wins (city over county over township over village).
"""

from enum import IntEnum, StrEnum

from devices.identifiers import RegionLevel, region_level


class BroadcastKind(StrEnum):
    """What a broadcast is: an emergency alert, a notice, or daily programming."""

    EMERGENCY = "emergency"
    NOTICE = "notice"
    PROGRAMME = "programme"


class EmergencyLevel(IntEnum):
    """Event levels as in the national message format: 1 is the gravest."""

    I = 1  # noqa: E741 -- the standard's own numbering, I to IV
    II = 2
    III = 3
    IV = 4

    @property
    def name_zh(self) -> str:
        return ("特别重大", "重大", "较大", "一般")[self.value - 1]

    @property
    def colour(self) -> str:
        return ("red", "orange", "yellow", "blue")[self.value - 1]


_ISSUER_RANK = {
    RegionLevel.VILLAGE: 0,
    RegionLevel.TOWNSHIP: 1,
    RegionLevel.COUNTY: 2,
    RegionLevel.CITY: 3,
    RegionLevel.PROVINCE: 4,
}
_ISSUER_SPAN = 10


def class_rank(kind: BroadcastKind, level: EmergencyLevel | None) -> int:
    """0 for a programme, 1 for a notice, 2 (level IV) to 5 (level I) for an emergency."""
    if kind == BroadcastKind.EMERGENCY:
        if level is None:
            raise ValueError("an emergency needs a level (1-4)")
        return 6 - int(level)
    if level is not None:
        raise ValueError(f"a {kind} has no emergency level")
    return 1 if kind == BroadcastKind.NOTICE else 0


def command_priority(kind: BroadcastKind, level: EmergencyLevel | None, issuer_region: str) -> int:
    """The single integer a terminal compares: higher wins; equal means neither pre-empts."""
    return class_rank(kind, level) * _ISSUER_SPAN + _ISSUER_RANK[region_level(issuer_region)]
