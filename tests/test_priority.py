"""The priority rule (devices/priority.py): class first, then the wider issuer."""

from itertools import combinations, product

import pytest

from devices.priority import BroadcastKind, EmergencyLevel, class_rank, command_priority

E = BroadcastKind.EMERGENCY

CLASSES_HIGHEST_FIRST: list[tuple[BroadcastKind, EmergencyLevel | None]] = [
    (E, EmergencyLevel.I),
    (E, EmergencyLevel.II),
    (E, EmergencyLevel.III),
    (E, EmergencyLevel.IV),
    (BroadcastKind.NOTICE, None),
    (BroadcastKind.PROGRAMME, None),
]
ISSUERS_WIDEST_FIRST = ["42", "4212", "421202", "421202001", "421202001002"]


def _class_id(cls: tuple[BroadcastKind, EmergencyLevel | None]) -> str:
    kind, level = cls
    return f"{kind.value}-{level.name}" if level is not None else kind.value


CLASS_PAIRS = [
    pytest.param(higher, lower, id=f"{_class_id(higher)}>{_class_id(lower)}")
    for higher, lower in combinations(CLASSES_HIGHEST_FIRST, 2)
]
CLASSES = [pytest.param(cls, id=_class_id(cls)) for cls in CLASSES_HIGHEST_FIRST]
ISSUER_PAIRS = [
    pytest.param(wider, narrower, id=f"{wider}>{narrower}")
    for wider, narrower in combinations(ISSUERS_WIDEST_FIRST, 2)
]
ANY_ISSUERS = [pytest.param(a, b, id=f"{a}-vs-{b}") for a, b in product(ISSUERS_WIDEST_FIRST, repeat=2)]


@pytest.mark.parametrize(("higher", "lower"), CLASS_PAIRS)
@pytest.mark.parametrize(("higher_issuer", "lower_issuer"), ANY_ISSUERS)
def test_higher_class_beats_lower_class_whatever_the_issuers(
    higher: tuple[BroadcastKind, EmergencyLevel | None],
    lower: tuple[BroadcastKind, EmergencyLevel | None],
    higher_issuer: str,
    lower_issuer: str,
) -> None:
    assert command_priority(*higher, higher_issuer) > command_priority(*lower, lower_issuer)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(("wider", "narrower"), ISSUER_PAIRS)
def test_within_a_class_the_wider_issuer_wins(
    cls: tuple[BroadcastKind, EmergencyLevel | None], wider: str, narrower: str
) -> None:
    assert command_priority(*cls, wider) > command_priority(*cls, narrower)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("issuer", ISSUERS_WIDEST_FIRST)
def test_same_class_from_same_issuer_level_is_equal(
    cls: tuple[BroadcastKind, EmergencyLevel | None], issuer: str
) -> None:
    sibling = issuer[:-1] + ("1" if issuer[-1] != "1" else "2")
    assert command_priority(*cls, issuer) == command_priority(*cls, sibling)


def test_city_notice_does_not_beat_village_emergency_level_iv() -> None:
    assert command_priority(BroadcastKind.NOTICE, None, "4212") < command_priority(
        E, EmergencyLevel.IV, "421202001002"
    )


@pytest.mark.parametrize(
    ("kind", "level", "issuer", "priority"),
    [
        pytest.param(E, EmergencyLevel.II, "421202", 42, id="county-emergency-II"),
        pytest.param(BroadcastKind.NOTICE, None, "421202100", 11, id="township-notice"),
        pytest.param(BroadcastKind.PROGRAMME, None, "421202100001", 0, id="village-programme"),
        pytest.param(E, EmergencyLevel.I, "42", 54, id="province-emergency-I"),
    ],
)
def test_priority_is_ten_times_class_plus_issuer_as_documented(
    kind: BroadcastKind, level: EmergencyLevel | None, issuer: str, priority: int
) -> None:
    assert command_priority(kind, level, issuer) == priority


@pytest.mark.parametrize(
    ("kind", "level", "rank"),
    [
        (BroadcastKind.PROGRAMME, None, 0),
        (BroadcastKind.NOTICE, None, 1),
        (E, EmergencyLevel.IV, 2),
        (E, EmergencyLevel.III, 3),
        (E, EmergencyLevel.II, 4),
        (E, EmergencyLevel.I, 5),
    ],
)
def test_class_rank_values(kind: BroadcastKind, level: EmergencyLevel | None, rank: int) -> None:
    assert class_rank(kind, level) == rank


def test_emergency_without_level_raises() -> None:
    with pytest.raises(ValueError, match="needs a level"):
        command_priority(E, None, "421202")


@pytest.mark.parametrize("kind", [BroadcastKind.NOTICE, BroadcastKind.PROGRAMME])
@pytest.mark.parametrize("level", list(EmergencyLevel))
def test_non_emergency_with_level_raises(kind: BroadcastKind, level: EmergencyLevel) -> None:
    with pytest.raises(ValueError, match="has no emergency level"):
        command_priority(kind, level, "421202")


@pytest.mark.parametrize("issuer", ["", "421", "42a2", "4212020010021"])
def test_malformed_issuer_region_raises(issuer: str) -> None:
    with pytest.raises(ValueError, match="not a region code"):
        command_priority(BroadcastKind.NOTICE, None, issuer)


@pytest.mark.parametrize(
    ("level", "name_zh", "colour"),
    [
        (EmergencyLevel.I, "特别重大", "red"),
        (EmergencyLevel.II, "重大", "orange"),
        (EmergencyLevel.III, "较大", "yellow"),
        (EmergencyLevel.IV, "一般", "blue"),
    ],
)
def test_emergency_level_chinese_name_and_colour(level: EmergencyLevel, name_zh: str, colour: str) -> None:
    assert (level.name_zh, level.colour) == (name_zh, colour)
