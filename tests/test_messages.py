"""Wire messages, their encoding and their defensive decoding (devices/messages.py)."""

import json
from datetime import timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from devices.errors import PayloadError, ProtocolError
from devices.messages import (
    Ack,
    AckReason,
    AckStage,
    BroadcastStatus,
    Command,
    Content,
    ControllerStatus,
    Heartbeat,
    Presence,
    TerminalStatus,
    WireModel,
    announcement,
    canonical_json,
    decode,
    encode,
)
from devices.priority import BroadcastKind, EmergencyLevel, command_priority
from tests.builders import (
    CITY,
    T0,
    VILLAGE,
    as_dict,
    command_id,
    make_ack,
    make_audio,
    make_command,
    make_content,
    make_controller_status,
    make_emergency,
    make_heartbeat,
    make_terminal_status,
    to_payload,
)

UTC_PLUS_8 = timezone(timedelta(hours=8))

MESSAGES: list[Any] = [
    pytest.param(make_command(), id="command-minimal"),
    pytest.param(
        make_emergency(
            level=EmergencyLevel.II,
            issuer_region=CITY,
            content=make_content(text="山洪预警", language="zh-CN", audio=make_audio()),
            volume=100,
            repeat=3,
        ),
        id="command-full",
    ),
    pytest.param(make_command(content=Content(audio=make_audio())), id="command-audio-only"),
    pytest.param(make_ack(), id="ack-received"),
    pytest.param(
        make_ack(
            AckStage.PREEMPTED,
            AckReason.HIGHER_PRIORITY,
            by=command_id(2),
            detail="pre-empted by a flood alert",
        ),
        id="ack-preempted",
    ),
    pytest.param(make_terminal_status(), id="terminal-status-minimal"),
    pytest.param(
        make_terminal_status(state=Presence.LOST, firmware="1.4.2", heartbeat_interval_s=60),
        id="terminal-status-full",
    ),
    pytest.param(make_controller_status(), id="controller-status"),
    pytest.param(make_heartbeat(), id="heartbeat-minimal"),
    pytest.param(
        make_heartbeat(
            amplifier="fault",
            speaker="open_circuit",
            supply="solar",
            battery_pct=80,
            temperature_c=41.5,
            signal_dbm=-87,
            playing=command_id(1),
        ),
        id="heartbeat-full",
    ),
]

COMMAND_REQUIRED_MEMBERS = ["id", "kind", "issuer_region", "priority", "issued_at", "expires_at", "content"]


def _decode_error(model: type[WireModel], payload: bytes | str) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        decode(model, payload)
    return caught.value


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES)
def test_encode_then_decode_gives_back_an_equal_message(message: WireModel) -> None:
    assert decode(type(message), encode(message)) == message


@pytest.mark.parametrize("message", MESSAGES)
def test_encoding_is_a_utf8_json_object_with_version_1(message: WireModel) -> None:
    data = json.loads(encode(message).decode("utf-8"))
    assert data["v"] == 1


@pytest.mark.parametrize("as_type", [bytes, bytearray, str], ids=lambda t: t.__name__)
def test_decode_accepts_bytes_bytearray_and_str(as_type: type) -> None:
    command = make_command()
    payload = encode(command)
    assert decode(Command, as_type(payload.decode()) if as_type is str else as_type(payload)) == command


def test_encode_leaves_out_absent_optional_members() -> None:
    data = as_dict(make_command())
    assert {"level", "volume"}.isdisjoint(data)
    assert "audio" not in data["content"]


def test_encode_keeps_non_ascii_text_as_utf8() -> None:
    assert "山洪预警".encode() in encode(make_command(content=make_content(text="山洪预警")))


def test_decoded_times_keep_their_utc_offset() -> None:
    command = make_command(issued_at=T0.astimezone(UTC_PLUS_8))
    assert decode(Command, encode(command)).issued_at.utcoffset() == timedelta(hours=8)


def test_messages_are_immutable() -> None:
    command = make_command()
    with pytest.raises(ValidationError):
        command.priority = 99  # type: ignore[misc]


# --- decode errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="text"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"{'v': 1}", id="single-quotes"),
        pytest.param(b'{"v": 1,}', id="trailing-comma"),
        pytest.param(b"\xff\xfe\xfd", id="non-utf8-bytes"),
        pytest.param(b'{"v": 1, "id": "\xe9"}', id="latin1-inside-json"),
        pytest.param(b"\xc3\x28", id="invalid-utf8-sequence"),
    ],
)
def test_decode_rejects_non_json_or_non_utf8_as_bad_json(payload: bytes) -> None:
    assert _decode_error(Command, payload).reason == "bad_json"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"[]", id="empty-array"),
        pytest.param(b'[{"v": 1}]', id="array-of-object"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"1", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="boolean"),
    ],
)
def test_decode_rejects_json_that_is_not_an_object_as_bad_payload(payload: bytes) -> None:
    assert _decode_error(Command, payload).reason == "bad_payload"


@pytest.mark.parametrize("member", COMMAND_REQUIRED_MEMBERS)
def test_decode_rejects_command_missing_a_required_member_as_bad_payload(member: str) -> None:
    data = as_dict(make_command())
    del data[member]
    assert _decode_error(Command, to_payload(data)).reason == "bad_payload"


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("id", 12345678),
        ("id", "short"),
        ("kind", "alarm"),
        ("level", 5),
        ("issuer_region", "42120"),
        ("priority", "high"),
        ("issued_at", "yesterday"),
        ("issued_at", "2026-11-27T05:00:00"),
        ("expires_at", None),
        ("content", "play this"),
        ("content", {}),
        ("volume", 101),
        ("repeat", 0),
        ("op", "stop"),
    ],
    ids=lambda value: str(value)[:20],
)
def test_decode_rejects_command_member_of_wrong_type_or_value_as_bad_payload(member: str, value: Any) -> None:
    data = as_dict(make_command())
    data[member] = value
    assert _decode_error(Command, to_payload(data)).reason == "bad_payload"


def test_bad_payload_detail_names_the_model_and_the_member() -> None:
    data = as_dict(make_command())
    data["priority"] = "high"
    assert _decode_error(Command, to_payload(data)).detail.startswith("Command.priority:")


def test_bad_payload_detail_names_a_nested_member() -> None:
    data = as_dict(make_command())
    data["content"]["language"] = "Chinese!"
    assert _decode_error(Command, to_payload(data)).detail.startswith("Command.content.language:")


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(2, id="v2"),
        pytest.param(0, id="v0"),
        pytest.param("1", id="string-1"),
        pytest.param(None, id="null"),
        pytest.param([1], id="array"),
    ],
)
def test_decode_rejects_other_version_as_unsupported_version(version: Any) -> None:
    data = as_dict(make_command())
    data["v"] = version
    assert _decode_error(Command, to_payload(data)).reason == "unsupported_version"


def test_decode_rejects_missing_version_as_unsupported_version() -> None:
    data = as_dict(make_command())
    del data["v"]
    assert _decode_error(Command, to_payload(data)).reason == "unsupported_version"


def test_decode_rejects_boolean_true_version_as_unsupported_version() -> None:
    data = as_dict(make_command())
    data["v"] = True
    assert _decode_error(Command, to_payload(data)).reason == "unsupported_version"


def test_decode_checks_the_version_before_the_members() -> None:
    assert _decode_error(Command, b'{"v": 2}').reason == "unsupported_version"


def test_decode_rejects_deeply_nested_json_with_payload_error() -> None:
    with pytest.raises(PayloadError):
        decode(Command, b"[" * 100_000 + b"]" * 100_000)


def test_decode_rejects_utf16_payload_as_bad_json() -> None:
    payload = encode(make_command()).decode().encode("utf-16")
    assert _decode_error(Command, payload).reason == "bad_json"


def test_payload_error_is_a_protocol_error() -> None:
    assert isinstance(_decode_error(Command, b"[]"), ProtocolError)


# --- unknown members ---------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES)
def test_unknown_top_level_members_are_ignored(message: WireModel) -> None:
    data = as_dict(message)
    data["signature"] = "abc"
    data["future"] = {"nested": [1, 2]}
    assert decode(type(message), to_payload(data)) == message


def test_unknown_members_inside_content_and_audio_are_ignored() -> None:
    command = make_command(content=make_content(audio=make_audio()))
    data = as_dict(command)
    data["content"]["voice"] = "female"
    data["content"]["audio"]["codec"] = "mp3"
    assert decode(Command, to_payload(data)) == command


# --- Command validation ------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [-10, -1, 1, 10])
def test_command_rejects_priority_that_does_not_match_kind_level_and_issuer(delta: int) -> None:
    expected = command_priority(BroadcastKind.NOTICE, None, "421202")
    with pytest.raises(ValidationError, match="does not match"):
        make_command(priority=expected + delta)


def test_decode_rejects_command_with_inconsistent_priority_as_bad_payload() -> None:
    data = as_dict(make_command())
    data["priority"] += 1
    assert _decode_error(Command, to_payload(data)).reason == "bad_payload"


def test_command_rejects_priority_of_another_issuer_level() -> None:
    with pytest.raises(ValidationError, match="does not match"):
        make_command(issuer_region=VILLAGE, priority=command_priority(BroadcastKind.NOTICE, None, CITY))


@pytest.mark.parametrize(
    "expires_in",
    [timedelta(0), timedelta(microseconds=-1), timedelta(hours=-1)],
    ids=["equal", "just-before", "hour-before"],
)
def test_command_rejects_expiry_not_after_issue(expires_in: timedelta) -> None:
    with pytest.raises(ValidationError, match="expires_at must be after issued_at"):
        make_command(expires_in=expires_in)


def test_command_compares_expiry_across_utc_offsets() -> None:
    same_instant = T0.astimezone(UTC_PLUS_8)
    with pytest.raises(ValidationError, match="expires_at must be after issued_at"):
        make_command(issued_at=T0, expires_at=same_instant)


def test_command_accepts_expiry_one_microsecond_after_issue() -> None:
    assert make_command(expires_in=timedelta(microseconds=1)).expires_at > T0


def test_command_rejects_emergency_without_level() -> None:
    with pytest.raises(ValidationError, match="needs a level"):
        make_command(kind=BroadcastKind.EMERGENCY, priority=20)


@pytest.mark.parametrize("kind", [BroadcastKind.NOTICE, BroadcastKind.PROGRAMME])
def test_command_rejects_level_on_non_emergency(kind: BroadcastKind) -> None:
    with pytest.raises(ValidationError, match="has no emergency level"):
        make_command(kind=kind, level=EmergencyLevel.I, priority=52)


def test_command_rejects_naive_times() -> None:
    with pytest.raises(ValidationError):
        make_command(issued_at=T0.replace(tzinfo=None))


# --- Content -----------------------------------------------------------------------------------


def test_content_needs_text_or_audio() -> None:
    with pytest.raises(ValidationError, match="content needs text or audio"):
        Content()


@pytest.mark.parametrize(
    "members",
    [{"text": "通知"}, {"audio": make_audio()}, {"text": "通知", "audio": make_audio()}],
    ids=["text", "audio", "both"],
)
def test_content_with_text_or_audio_is_valid(members: dict[str, Any]) -> None:
    assert Content(**members).language == "zh-CN"


def test_content_rejects_empty_text() -> None:
    with pytest.raises(ValidationError):
        Content(text="")


@pytest.mark.parametrize(
    "overrides",
    [
        {"url": "ftp://media.example.org/a.mp3"},
        {"size": 0},
        {"sha256": "E3B0" + "0" * 60},
        {"sha256": "0" * 63},
    ],
    ids=["non-http-url", "zero-size", "uppercase-sha256", "short-sha256"],
)
def test_audio_ref_rejects_invalid_member(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make_audio(**overrides)


# --- Ack ---------------------------------------------------------------------------------------

STAGES_WITH_REASON = [AckStage.PREEMPTED, AckStage.REJECTED, AckStage.FAILED]
STAGES_WITHOUT_REASON = [AckStage.RECEIVED, AckStage.PLAYING, AckStage.COMPLETED, AckStage.CANCELLED]


def test_every_stage_is_classified_for_reasons() -> None:
    assert set(STAGES_WITH_REASON) | set(STAGES_WITHOUT_REASON) == set(AckStage)


@pytest.mark.parametrize("stage", STAGES_WITH_REASON)
def test_ack_requires_reason_for_final_negative_stage(stage: AckStage) -> None:
    with pytest.raises(ValidationError, match="needs reason"):
        make_ack(stage)


@pytest.mark.parametrize("stage", STAGES_WITH_REASON)
def test_ack_accepts_reason_for_final_negative_stage(stage: AckStage) -> None:
    assert make_ack(stage, AckReason.BUSY).reason is AckReason.BUSY


@pytest.mark.parametrize("stage", STAGES_WITHOUT_REASON)
def test_ack_refuses_reason_for_positive_stage(stage: AckStage) -> None:
    with pytest.raises(ValidationError, match="takes no reason"):
        make_ack(stage, AckReason.BUSY)


@pytest.mark.parametrize("stage", STAGES_WITHOUT_REASON)
def test_ack_without_reason_is_valid_for_positive_stage(stage: AckStage) -> None:
    assert make_ack(stage).reason is None


def test_decode_rejects_ack_missing_its_reason_as_bad_payload() -> None:
    data = as_dict(make_ack(AckStage.REJECTED, AckReason.EXPIRED))
    del data["reason"]
    assert _decode_error(Ack, to_payload(data)).reason == "bad_payload"


def test_ack_rejects_detail_over_500_characters() -> None:
    with pytest.raises(ValidationError):
        make_ack(AckStage.FAILED, AckReason.PLAYBACK_ERROR, detail="x" * 501)


# --- other models ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "member", "value"),
    [
        (TerminalStatus, "session", -1),
        (TerminalStatus, "region", "42120"),
        (TerminalStatus, "state", "away"),
        (TerminalStatus, "heartbeat_interval_s", 0),
        (ControllerStatus, "controller_id", "Controller"),
        (Heartbeat, "volume", 101),
        (Heartbeat, "battery_pct", -1),
        (Heartbeat, "temperature_c", 151),
        (Heartbeat, "signal_dbm", 1),
        (Heartbeat, "speaker", "blown"),
        (Heartbeat, "playing", "x"),
    ],
    ids=lambda value: str(getattr(value, "__name__", value)),
)
def test_decode_rejects_invalid_member_of_status_or_heartbeat_as_bad_payload(
    model: type[WireModel], member: str, value: Any
) -> None:
    builders = {
        TerminalStatus: make_terminal_status,
        ControllerStatus: make_controller_status,
        Heartbeat: make_heartbeat,
    }
    data = as_dict(builders[model]())
    data[member] = value
    assert _decode_error(model, to_payload(data)).reason == "bad_payload"


# --- canonical bytes ---------------------------------------------------------------------------


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reverse_keys(value[key]) for key in reversed(list(value))}
    return value


FULL_COMMAND = make_emergency(
    level=EmergencyLevel.III,
    issuer_region=CITY,
    issued_at=T0.astimezone(UTC_PLUS_8).replace(microsecond=123456),
    content=make_content(text="山洪预警", audio=make_audio()),
    volume=90,
    repeat=2,
)


def test_signed_bytes_are_the_same_for_equal_commands_built_separately() -> None:
    assert make_command().signed_bytes() == make_command().signed_bytes()


def test_signed_bytes_do_not_depend_on_the_received_key_order() -> None:
    reordered = to_payload(_reverse_keys(as_dict(FULL_COMMAND)))
    assert decode(Command, reordered).signed_bytes() == FULL_COMMAND.signed_bytes()


def test_signed_bytes_survive_an_encode_decode_round_trip() -> None:
    assert decode(Command, encode(FULL_COMMAND)).signed_bytes() == FULL_COMMAND.signed_bytes()


def test_signed_bytes_are_sorted_compact_utf8_json() -> None:
    canonical = FULL_COMMAND.signed_bytes()
    data = json.loads(canonical.decode("utf-8"))
    assert canonical == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_signed_bytes_keep_non_ascii_text_unescaped() -> None:
    assert "山洪预警".encode() in FULL_COMMAND.signed_bytes()


def test_signed_bytes_include_every_member_that_is_sent() -> None:
    assert json.loads(FULL_COMMAND.signed_bytes()) == as_dict(FULL_COMMAND)


def test_signed_bytes_include_version_op_defaults_and_language() -> None:
    data = json.loads(make_command().signed_bytes())
    assert (data["v"], data["op"], data["repeat"], data["content"]["language"]) == (1, "play", 1, "zh-CN")


def test_signed_bytes_leave_out_absent_optional_members() -> None:
    data = json.loads(make_command().signed_bytes())
    assert {"level", "volume"}.isdisjoint(data)
    assert "audio" not in data["content"]


def test_signed_bytes_leave_out_unknown_received_members() -> None:
    data = as_dict(FULL_COMMAND)
    data["x-extra"] = "unsigned"
    assert decode(Command, to_payload(data)).signed_bytes() == FULL_COMMAND.signed_bytes()


def test_signed_bytes_keep_times_with_their_offset_and_microseconds() -> None:
    data = json.loads(FULL_COMMAND.signed_bytes())
    assert data["issued_at"] == "2026-11-27T13:00:00.123456+08:00"


@pytest.mark.parametrize(
    "sent", ["2026-11-27T05:00:00+00:00", "2026-11-27T05:00:00.000Z", "2026-11-27T05:00:00Z"]
)
def test_signed_bytes_are_the_same_however_an_equal_time_was_written(sent: str) -> None:
    data = as_dict(make_command())
    data["issued_at"] = sent
    assert b'"issued_at":"2026-11-27T05:00:00Z"' in decode(Command, to_payload(data)).signed_bytes()


@pytest.mark.parametrize(
    "changes",
    [
        {"id": command_id(99)},
        {"level": EmergencyLevel.II},
        {"issuer_region": "421202"},
        {"issued_at": FULL_COMMAND.issued_at - timedelta(seconds=1)},
        {"expires_in": timedelta(minutes=11)},
        {"content": make_content(text="山洪预警!", audio=make_audio())},
        {"content": make_content(text="山洪预警", audio=make_audio(size=48_001))},
        {"content": make_content(text="山洪预警", language="en", audio=make_audio())},
        {"volume": 91},
        {"repeat": 3},
    ],
    ids=lambda changes: next(iter(changes)),
)
def test_signed_bytes_change_when_any_signed_member_changes(changes: dict[str, Any]) -> None:
    members: dict[str, Any] = {
        "level": EmergencyLevel.III,
        "issuer_region": CITY,
        "issued_at": FULL_COMMAND.issued_at,
        "content": FULL_COMMAND.content,
        "volume": 90,
        "repeat": 2,
    }
    members.update(changes)
    assert make_emergency(**members).signed_bytes() != FULL_COMMAND.signed_bytes()


def test_canonical_json_does_not_depend_on_insertion_order() -> None:
    assert canonical_json({"b": 1, "a": {"d": 2, "c": 3}}) == canonical_json({"a": {"c": 3, "d": 2}, "b": 1})


def test_canonical_json_is_compact() -> None:
    assert canonical_json({"a": [1, 2], "b": "村"}) == '{"a":[1,2],"b":"村"}'.encode()


def test_exercises_and_tests_are_announced_in_the_contents_language() -> None:
    assert announcement(BroadcastStatus.ACTUAL, "zh-CN") is None
    assert announcement(BroadcastStatus.EXERCISE, "zh-CN") == "演练，演练。以下是应急演练信息。"
    assert announcement(BroadcastStatus.TEST, "en") == "This is a test. This is only a test."
    assert announcement(BroadcastStatus.EXERCISE, "bo") == "演练，演练。以下是应急演练信息。"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":1,"\\u0076":true,"command_id":"b20261127x0001","terminal_id":"t-1","stage":"received",'
        b'"at":"2026-11-27T05:00:00Z"}',  # a second, escaped `v`
        b'{"v":1,"v":1.0,"command_id":"b20261127x0001","terminal_id":"t-1","stage":"received",'
        b'"at":"2026-11-27T05:00:00Z"}',
        b'{"v":1,"command_id":"b20261127x0001","terminal_id":"t-1","stage":"received",'
        b'"at":"2026-11-27T05:00:00Z","x":' + b"1" * 5000 + b"}",  # more digits than Python converts
    ],
)
def test_decode_in_encodes_form_refuses_what_the_general_path_refuses(payload: bytes) -> None:
    with pytest.raises(PayloadError) as fast:
        decode(Ack, payload)
    with pytest.raises(PayloadError) as general:
        decode(Ack, payload.decode())  # a str always takes the general path
    assert (fast.value.reason, fast.value.detail) == (general.value.reason, general.value.detail)


def test_decode_in_encodes_form_gives_what_the_general_path_gives() -> None:
    ack = Ack(command_id="b20261127x0001", terminal_id="t-1", stage=AckStage.PLAYING, at=T0)
    payload = encode(ack)
    assert payload.startswith(b'{"v":1,')
    assert decode(Ack, payload) == decode(Ack, payload.decode()) == ack
