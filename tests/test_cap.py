"""Every message of the real CAP corpus (tests/data/cap) maps to its expected decision.

The test county is 421202 with a geocode table and terminal positions chosen so that each real
alert either reaches it (through a geocode or a terminal inside its polygon or circle) or plainly
does not; `now` is a minute after each message was sent, so only #11, which expires as it is
sent, has expired.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.cap import (
    CapBroadcast,
    CapCancel,
    CapDecision,
    CapOutcome,
    CapReference,
    CapRejected,
    CapRejection,
    CapRules,
    CapStoreOnly,
    CapUpdate,
    TerminalPosition,
    ingest_cap,
    parse_cap,
    read_alert,
)

CORPUS = Path(__file__).parent / "data" / "cap"
MAX_BYTES = 1024 * 1024

RULES = CapRules(
    county_region="421202",
    geocodes={
        "SAME": {"006037": ["421202001"], "072115": ["421202002"]},
        "Taiwan_Geocode_103": {
            "1001502": ["421202003"],
            "1000812": ["421202004"],
            "6702500": ["421202005"],
            "6700800": ["421202006"],
            "10015": ["421202007"],
        },
        "UGC": {"AKZ185": ["421202008"]},
        "AMOC-AreaCode": {"NSW_PW002": ["421202009"]},
    },
)

# (id, latitude, longitude): one terminal inside each real polygon or circle that should reach us.
TERMINALS = [
    TerminalPosition("t-tuolumne", 38.4875, -119.93),
    TerminalPosition("t-brawley", 32.9525, -115.5527),  # exactly the centre of a radius-0 circle
    TerminalPosition("t-montgomery", 39.0839, -77.1494),
    TerminalPosition("t-dixon-entrance", 55.3, -134.9),
    TerminalPosition("t-port-aux-basques", 47.7579, -58.7878),
    TerminalPosition("t-windsor", 42.1345, -82.7277),
    TerminalPosition("t-reykjavik", 64.1114, -21.8914),
    TerminalPosition("t-luzon", 12.75, 121.25),
    TerminalPosition("t-mahe", -9.5101, 46.4124),
    TerminalPosition("t-xianning", 29.84, 114.32),  # at home: inside none of them
]


@dataclass(frozen=True)
class Expected:
    kind: str
    level: int | None = None
    """1-4 for an emergency, None for a notice"""
    language: str | None = None
    event: str | None = None
    status: str = "actual"
    regions: tuple[str, ...] = ()
    terminals: tuple[str, ...] = ()
    reason: str | None = None
    """a fragment of the reason of a cancel, store_only or rejected decision"""


EXPECTED: dict[str, Expected] = {
    "01_": Expected("store_only", reason="none of its areas is in this county"),
    "02_": Expected(
        "broadcast", 2, "en-US", "SEVERE THUNDERSTORM", terminals=("t-tuolumne",)
    ),  # Severe Immediate Observed
    "03_": Expected("update", None, "en-US", "Earthquake", terminals=("t-brawley",)),  # Minor, Past
    "04_": Expected("broadcast", 2, "en-US", "Child Abduction", regions=("421202001",)),
    "07_": Expected("cancel"),
    "08_": Expected("broadcast", 2, "en-US", "Required Monthly Test", regions=("421202002",)),
    "09_": Expected(
        "broadcast", 1, "en-US", "Local Area Emergency", terminals=("t-montgomery",)
    ),  # Extreme Immediate Observed
    "11_": Expected("cancel", reason="the update ends it: it expired at 2013-01-05T10:58:23+00:00"),
    "12_": Expected("update", 1, "en-US", "Tsunami Warning", regions=("421202008",)),
    "14_": Expected("rejected", reason="CAP 1.1 is not supported; send 1.2"),
    "15_": Expected("broadcast", None, "en-CA", "weather", terminals=("t-port-aux-basques",)),
    "16_": Expected("update", None, "en-CA", "thunderstorm", terminals=("t-windsor",)),  # AllClear
    "18_": Expected("rejected", reason="an Update must name the message(s) it replaces in <references>"),
    "19_": Expected("broadcast", 4, "zh-TW", "降雨", regions=("421202003",)),  # Moderate Future Likely
    "20_": Expected("update", 2, "zh-TW", "降雨", regions=("421202003", "421202004")),
    "23_": Expected("broadcast", None, "zh-TW", "地震", regions=("421202007",)),  # Minor Past: a notice
    "25_": Expected("broadcast", 3, "zh-TW", "高溫", regions=("421202005", "421202006")),
    "29_": Expected("broadcast", 4, "en-US", "Weather Warning: Wind", terminals=("t-reykjavik",)),
    "31_": Expected("broadcast", 4, "en-AU", "Thunderstorm", regions=("421202009",)),
    "34_": Expected("broadcast", 4, "en-US", "Tropical Cyclone Alert", "test", terminals=("t-luzon",)),
    "35_": Expected("broadcast", 3, "en", "Strong Winds", terminals=("t-mahe",)),
    "38_": Expected(
        "rejected",
        reason="not valid CAP 1.2: line 9: Element 'info': This element is not expected. "
        "Expected is one of ( source, scope ).",
    ),
}


def _corpus_file(prefix: str) -> Path:
    (path,) = CORPUS.glob(f"{prefix}*.xml")
    return path


def _ingest(data: bytes, known: set[CapReference] | None = None) -> CapOutcome:
    """Ingest a minute after the message was sent; by default every message it references is known."""
    try:
        alert = read_alert(parse_cap(data, MAX_BYTES))
    except CapRejected:
        alert = None  # ingest_cap rejects it too, whatever the time
    return ingest_cap(
        data,
        rules=RULES,
        max_bytes=MAX_BYTES,
        terminals=TERMINALS,
        known=known if known is not None else set(alert.references if alert else ()),
        now=alert.sent + timedelta(minutes=1) if alert else datetime.now(UTC),
    )


def test_the_table_covers_every_file_of_the_corpus() -> None:
    files = sorted(p.name[:3] for p in CORPUS.glob("*.xml"))
    assert files == sorted(EXPECTED)


@pytest.mark.parametrize("prefix", sorted(EXPECTED))
def test_each_real_message_maps_to_its_expected_decision(prefix: str) -> None:
    expected = EXPECTED[prefix]
    decision: CapDecision = _ingest(_corpus_file(prefix).read_bytes()).decision
    assert decision.kind == expected.kind, getattr(decision, "reason", decision)
    if isinstance(decision, CapBroadcast):
        request = decision.request
        assert (request.level, decision.language, request.event, request.status.value) == (
            expected.level,
            expected.language,
            expected.event,
            expected.status,
        )
        assert request.kind.value == ("notice" if expected.level is None else "emergency")
        assert (tuple(request.regions), tuple(request.terminals)) == (expected.regions, expected.terminals)
        assert decision.areas
    else:
        assert isinstance(decision, CapCancel | CapStoreOnly | CapRejection)
        assert expected.reason is None or expected.reason in decision.reason


def test_the_heavy_rain_update_replaces_the_alert_it_references() -> None:
    alert = _ingest(_corpus_file("19_").read_bytes(), known=set())
    assert alert.alert is not None and alert.decision.kind == "broadcast"

    update = _ingest(_corpus_file("20_").read_bytes(), known={alert.alert.reference})

    assert isinstance(update.decision, CapUpdate)
    assert update.decision.replaces == [alert.alert.reference]
    assert update.decision.request.level == 2  # the rain worsened: Moderate Future → Severe Expected
    assert update.decision.notes[0] == (
        "references gives CWA-Weather_extremely-rain_202404221405001 as sent 2024-04-22T14:12:13+08:00; "
        "it was sent 2024-04-22T14:12:12+08:00"
    )


def test_an_update_of_a_message_never_received_is_rejected() -> None:
    decision = _ingest(_corpus_file("20_").read_bytes(), known=set()).decision

    assert isinstance(decision, CapRejection)
    assert decision.reason == (
        "the Update refers to no message we have: weather@cwa.gov.tw,"
        "CWA-Weather_extremely-rain_202404221405001,2024-04-22T14:12:13+08:00"
    )


def test_a_cancel_of_a_message_never_received_is_rejected() -> None:
    decision = _ingest(_corpus_file("07_").read_bytes(), known=set()).decision

    assert isinstance(decision, CapRejection)
    assert decision.reason.startswith("the Cancel refers to no message we have: AtHoc,")


def test_embedded_audio_whose_size_does_not_match_is_left_out_and_the_text_spoken() -> None:
    decision = _ingest(_corpus_file("08_").read_bytes()).decision

    assert isinstance(decision, CapBroadcast)
    assert decision.audio is None
    assert decision.request.text is not None and "THIS IS ONLY A TEST" in decision.request.text
    assert decision.notes == [
        "audio 'EAS Broadcast Content' left out, the text is spoken instead: "
        "it is 72932 bytes, its <size> says 98865"
    ]


def test_a_byte_order_mark_and_a_cap_prefix_are_accepted() -> None:
    for prefix in ("23_", "31_"):
        data = _corpus_file(prefix).read_bytes()
        assert read_alert(parse_cap(data, MAX_BYTES)).status.value == "Actual"
    assert _corpus_file("23_").read_bytes().startswith(b"\xef\xbb\xbf")
    assert b"<cap:alert" in _corpus_file("31_").read_bytes()


def test_the_bilingual_canadian_alert_is_broadcast_in_english_not_french() -> None:
    decision = _ingest(_corpus_file("15_").read_bytes()).decision

    assert isinstance(decision, CapBroadcast)
    assert decision.request.language == "en-CA"
    assert decision.request.text is not None and "météo" not in decision.request.text
