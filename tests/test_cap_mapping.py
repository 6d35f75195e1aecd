"""The operator's tables and the mapping rules decide what a CAP alert becomes."""

import base64
import hashlib
from datetime import datetime, timedelta

import pytest

from controller.cap import (
    CapBroadcast,
    CapCancel,
    CapDecision,
    CapReference,
    CapRejection,
    CapRules,
    CapStoreOnly,
    CapUpdate,
    LevelRule,
    TerminalPosition,
    ingest_cap,
)
from controller.cap.rules import admin_code
from controller.settings import SettingsError, load_settings
from tests.cap_builders import SENT, area_xml, cap_xml, info_xml, resource_xml

NOW = datetime.fromisoformat(SENT) + timedelta(minutes=1)
COUNTY = CapRules(county_region="421202")
EARLIER = CapReference(
    sender="qxj@xianning.gov.cn", identifier="XN-2026-000", sent=datetime.fromisoformat(SENT)
)
EARLIER_TEXT = f"{EARLIER.sender},{EARLIER.identifier},{SENT}"


def _decide(
    data: bytes,
    rules: CapRules = COUNTY,
    terminals: tuple[TerminalPosition, ...] = (),
    known: tuple[CapReference, ...] = (),
) -> CapDecision:
    return ingest_cap(
        data, rules=rules, max_bytes=1024 * 1024, terminals=terminals, known=known, now=NOW
    ).decision


def _broadcast(data: bytes, rules: CapRules = COUNTY) -> CapBroadcast:
    decision = _decide(data, rules)
    assert isinstance(decision, CapBroadcast), decision
    return decision


@pytest.mark.parametrize(
    ("severity", "urgency", "certainty", "level"),
    [
        ("Extreme", "Immediate", "Observed", 1),
        ("Extreme", "Future", "Possible", 2),
        ("Severe", "Expected", "Likely", 2),
        ("Severe", "Future", "Likely", 3),
        ("Moderate", "Immediate", "Observed", 3),
        ("Moderate", "Future", "Possible", 4),
        ("Minor", "Immediate", "Observed", 4),
        ("Unknown", "Unknown", "Unknown", 4),
        ("Minor", "Future", "Likely", None),
        ("Extreme", "Past", "Observed", None),
        ("Severe", "Immediate", "Unlikely", None),
    ],
)
def test_the_default_level_table(severity: str, urgency: str, certainty: str, level: int | None) -> None:
    request = _broadcast(cap_xml(info_xml(severity=severity, urgency=urgency, certainty=certainty))).request

    assert request.level == level
    assert request.kind.value == ("notice" if level is None else "emergency")


def test_an_all_clear_is_a_notice_whatever_its_severity() -> None:
    request = _broadcast(cap_xml(info_xml(severity="Extreme", response="AllClear"))).request

    assert (request.kind.value, request.level) == ("notice", None)


def test_a_configured_level_table_changes_the_outcome() -> None:
    rules = COUNTY.model_copy(
        update={
            "level_rules": (LevelRule(severity=frozenset({"Minor"}), outcome=2), LevelRule(outcome="notice"))
        }
    )

    assert _broadcast(cap_xml(info_xml(severity="Minor", urgency="Future")), rules).request.level == 2
    assert _broadcast(cap_xml(info_xml(severity="Extreme")), rules).request.level is None


def test_the_level_table_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "CUNXIANG_CAP_LEVEL_RULES",
        '[{"severity": ["Severe"], "urgency": ["Future"], "outcome": 1}, {"outcome": 4}]',
    )
    monkeypatch.setenv("CUNXIANG_CAP_LANGUAGES", '["en", "zh"]')
    rules = load_settings().cap_rules

    assert _broadcast(cap_xml(info_xml(urgency="Future")), rules).request.level == 1
    assert rules.languages == ("en", "zh")


def test_a_geocode_mapping_that_names_no_region_is_a_setting_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUNXIANG_CAP_GEOCODES", '{"SAME": {"006037": ["Los Angeles"]}}')

    with pytest.raises(SettingsError, match=r"CUNXIANG_CAP_GEOCODES.*Los Angeles"):
        load_settings()


@pytest.mark.parametrize(
    ("languages", "preferences", "chosen"),
    [
        (("en-US", "zh-CN", "zh-TW"), ("zh-CN", "zh", "en"), "zh-CN"),
        (("en-US", "zh-TW"), ("zh-CN", "zh", "en"), "zh-TW"),
        (("fr-CA", "en-CA"), ("zh-CN", "zh", "en"), "en-CA"),
        (("is-IS", "fr-FR"), ("zh-CN", "zh", "en"), "is-IS"),
        (("ZH-cn", "en"), ("zh-CN",), "ZH-cn"),
        (("zh-CN", "en-US"), ("en",), "en-US"),
    ],
)
def test_the_info_block_is_chosen_by_the_language_preferences(
    languages: tuple[str, ...], preferences: tuple[str, ...], chosen: str
) -> None:
    data = cap_xml(*(info_xml(language=lang, event=f"event in {lang}") for lang in languages))

    decision = _broadcast(data, COUNTY.model_copy(update={"languages": preferences}))

    assert (decision.language, decision.request.event) == (chosen, f"event in {chosen}")
    assert decision.request.language == chosen.split("-")[0].lower() + chosen[len(chosen.split("-")[0]) :]


def test_an_info_block_without_a_language_is_cap_s_default_english() -> None:
    assert _broadcast(cap_xml(info_xml(language=None))).language == "en-US"


@pytest.mark.parametrize(
    ("value", "regions"),
    [
        ("421202", ["421202"]),
        ("421202001", ["421202001"]),
        ("421202001000", ["421202001"]),
        ("421200", ["421202"]),  # the whole city: the whole county
        ("420000", ["421202"]),
        ("421221", []),  # 嘉鱼县, next door
        ("4212", ["421202"]),
        ("not-a-code", []),
    ],
)
def test_administrative_codes_are_used_directly_and_clipped_to_the_county(
    value: str, regions: list[str]
) -> None:
    assert COUNTY.regions_for("China-admin", value) == regions


def test_gb_t_2260_padding_is_undone() -> None:
    assert [admin_code(c) for c in ("420000", "421200", "421202", "421202000000", "12345")] == [
        "42",
        "4212",
        "421202",
        "421202",
        None,
    ]


def test_a_configured_geocode_mapping_reaches_our_regions() -> None:
    data = cap_xml(info_xml(areas=(area_xml(geocodes=(("Taiwan_Geocode_103", "10015"),)),)))
    assert isinstance(_decide(data), CapStoreOnly)

    rules = COUNTY.model_copy(update={"geocodes": {"Taiwan_Geocode_103": {"10015": ["421202001", "421221"]}}})

    assert _broadcast(data, rules).request.regions == ["421202001"]


def test_an_admin_geocode_name_can_be_configured() -> None:
    data = cap_xml(info_xml(areas=(area_xml(geocodes=(("行政区划", "421202001"),)),)))
    rules = COUNTY.model_copy(update={"admin_geocode_names": frozenset({"行政区划"})})

    assert isinstance(_decide(data), CapStoreOnly)
    assert _broadcast(data, rules).request.regions == ["421202001"]


def test_a_polygon_selects_terminals_and_names_the_area() -> None:
    area = area_xml(
        "咸宁城区", polygons=("30.0,114.2 30.0,114.4 29.8,114.4 29.8,114.2 30.0,114.2",), geocodes=()
    )
    terminals = (TerminalPosition("t-in", 29.9, 114.3), TerminalPosition("t-out", 29.5, 114.3))

    decision = _decide(cap_xml(info_xml(areas=(area,))), terminals=terminals)

    assert isinstance(decision, CapBroadcast)
    assert (decision.request.terminals, decision.request.regions, decision.areas) == (
        ["t-in"],
        [],
        ["咸宁城区"],
    )


def test_the_text_is_headline_description_and_instruction_each_once() -> None:
    info = info_xml(
        headline="暴雨红色预警", description="暴雨红色预警\n   未来三小时\n降雨100毫米。", instruction=None
    )

    assert _broadcast(cap_xml(info)).request.text == "暴雨红色预警 未来三小时 降雨100毫米。"
    assert (
        _broadcast(cap_xml(info_xml(headline=None, description=None, instruction=None))).request.text
        == "暴雨"
    )


def test_a_long_text_is_cut_to_the_limit() -> None:
    text = _broadcast(cap_xml(info_xml(description="雨" * 5000))).request.text

    assert text is not None and len(text) == 4000 and text.endswith("…")


def test_the_expiry_is_the_alert_s_or_the_default_and_never_past_the_limit() -> None:
    assert _broadcast(cap_xml()).request.expires_at == datetime.fromisoformat("2026-11-27T16:00:00+08:00")
    assert _broadcast(cap_xml(info_xml(expires=None))).request.expires_at == NOW + timedelta(hours=1)
    far = cap_xml(info_xml(expires="2027-11-27T16:00:00+08:00"))
    assert _broadcast(far).request.expires_at == NOW + timedelta(days=7)


def test_an_expired_alert_is_stored_only() -> None:
    decision = _decide(cap_xml(info_xml(expires="2026-11-27T09:00:00+08:00")))

    assert decision == CapStoreOnly(reason="it expired at 2026-11-27T09:00:00+08:00")


def test_an_alert_effective_later_carries_its_start() -> None:
    decision = _broadcast(cap_xml(info_xml(effective="2026-11-27T12:00:00+08:00")))

    assert decision.not_before == datetime.fromisoformat("2026-11-27T12:00:00+08:00")


@pytest.mark.parametrize(
    ("status", "msg_type", "scope", "reason"),
    [
        ("Draft", "Alert", "Public", "status Draft: kept for the record, never broadcast"),
        ("System", "Alert", "Public", "status System: kept for the record, never broadcast"),
        ("Actual", "Ack", "Public", "msgType Ack: an answer to a message, nothing to play"),
        ("Actual", "Error", "Public", "msgType Error: an answer to a message, nothing to play"),
        ("Actual", "Alert", "Restricted", "scope Restricted: not for public loudspeakers"),
    ],
)
def test_messages_that_are_never_broadcast_are_stored_with_why(
    status: str, msg_type: str, scope: str, reason: str
) -> None:
    data = cap_xml(info_xml(), status=status, msg_type=msg_type, scope=scope)

    assert _decide(data) == CapStoreOnly(reason=reason)


@pytest.mark.parametrize(
    ("status", "ours"), [("Actual", "actual"), ("Exercise", "exercise"), ("Test", "test")]
)
def test_the_status_carries_over(status: str, ours: str) -> None:
    assert _broadcast(cap_xml(status=status)).request.status.value == ours


def test_an_alert_without_info_is_stored_only() -> None:
    data = cap_xml(info_xml()).replace(info_xml().encode(), b"")

    assert _decide(data) == CapStoreOnly(reason="no <info> block: nothing to broadcast")


def test_an_update_replaces_the_known_message_and_a_cancel_cancels_it() -> None:
    update = _decide(cap_xml(info_xml(), msg_type="Update", references=EARLIER_TEXT), known=(EARLIER,))
    cancel = _decide(cap_xml(msg_type="Cancel", references=EARLIER_TEXT), known=(EARLIER,))

    assert isinstance(update, CapUpdate) and update.replaces == [EARLIER]
    assert cancel == CapCancel(cancels=[EARLIER], reason="cancelled by the sender")


def test_an_update_that_no_longer_covers_the_county_cancels_the_earlier_broadcast() -> None:
    elsewhere = info_xml(areas=(area_xml(geocodes=(("China-admin", "421221"),)),))

    decision = _decide(cap_xml(elsewhere, msg_type="Update", references=EARLIER_TEXT), known=(EARLIER,))

    assert isinstance(decision, CapCancel) and decision.cancels == [EARLIER]
    assert decision.reason.startswith("the update ends it: none of its areas is in this county")


def test_embedded_audio_that_matches_its_size_and_digest_becomes_the_audio() -> None:
    audio = b"ID3\x04" + bytes(range(256)) * 4
    resource = resource_xml(
        deref=base64.b64encode(audio).decode(), size=len(audio), digest=hashlib.sha1(audio).hexdigest()
    )

    decision = _broadcast(cap_xml(info_xml(resources=(resource,))))

    assert decision.audio is not None and decision.audio.content == audio
    assert decision.request.text is not None  # the fallback when the audio cannot be played


def test_embedded_audio_with_a_wrong_digest_is_left_out() -> None:
    audio = b"ID3\x04" * 100
    resource = resource_xml(deref=base64.b64encode(audio).decode(), digest="0" * 40)

    decision = _broadcast(cap_xml(info_xml(resources=(resource,))))

    assert decision.audio is None
    assert decision.notes[0].startswith(
        "audio '预警音频' left out, the text is spoken instead: its SHA-1 is "
    )


def test_an_audio_uri_is_left_for_the_caller_to_fetch_and_images_are_ignored() -> None:
    resources = (
        resource_xml(mime_type="image/png", uri="https://example.org/map.png", description="地图"),
        resource_xml(uri="https://example.org/alert.mp3"),
    )

    decision = _broadcast(cap_xml(info_xml(resources=resources)))

    assert decision.audio is not None
    assert (decision.audio.uri, decision.audio.content) == ("https://example.org/alert.mp3", None)


def test_a_polygon_over_more_terminals_than_a_broadcast_may_address_is_rejected_not_raised() -> None:
    area = area_xml(polygons=("30.0,114.2 30.0,114.4 29.8,114.4 29.8,114.2 30.0,114.2",), geocodes=())
    crowd = tuple(TerminalPosition(f"t-{n}", 29.9, 114.3) for n in range(10_001))

    decision = _decide(cap_xml(info_xml(areas=(area,))), terminals=crowd)

    assert decision == CapRejection(
        reason="it cannot become a broadcast: terminals: "
        "List should have at most 10000 items after validation, "
        "not 10001"
    )
