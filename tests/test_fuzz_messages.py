"""Fuzzing both sides of the wire (issue 9): whatever arrives, a terminal and the controller answer
with a documented, metric-safe reason and keep running.

Examples per test: CUNXIANG_FUZZ_EXAMPLES (default 150, so the file runs in seconds on CI, and
derandomized, so CI is reproducible). A longer campaign, with a fresh random seed each run:

    CUNXIANG_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_messages.py
"""

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from controller.db import make_engine
from controller.delivery import FINAL_STATES, DeliveryState
from controller.metrics import Metrics
from controller.service import Controller
from controller.tracker import DeliveryTracker, LiveBroadcast
from controller.writer import DbWriter
from devices import messages
from devices.errors import PayloadError, TopicError
from devices.identifiers import REGION_CODE_PATTERN, TERMINAL_ID_PATTERN
from devices.messages import (
    COMMAND_ID_PATTERN,
    SESSION_MAX,
    Ack,
    AckReason,
    AckStage,
    Amplifier,
    AudioRef,
    BroadcastStatus,
    Cancel,
    Command,
    Content,
    ControllerStatus,
    Heartbeat,
    Presence,
    Speaker,
    Supply,
    TerminalStatus,
    WireModel,
    decode,
    decode_command,
    decode_heartbeat,
    encode,
)
from devices.priority import BroadcastKind, EmergencyLevel, command_priority
from devices.terminal_core import TerminalCore
from devices.topics import TerminalChannel, TopicScheme
from tests.builders import T0, TEST_KEYS, signed
from tests.conftest import make_settings
from tests.test_protocol_document import examples

LONG_CAMPAIGN = "CUNXIANG_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=int(os.environ.get("CUNXIANG_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=not LONG_CAMPAIGN,
    # No example database: a failure is reproduced from the seed or the pinned @example.
    database=None,
    # Oversized and deeply nested payloads are the point, not a slow generator.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

METRIC_SAFE = re.compile(r"^[a-z][a-z0-9_]{2,39}$")
PAYLOAD_REASONS = {"bad_json", "bad_payload", "unsupported_version", "unknown_stage"}
# docs/protocol.md, "What the controller does with bad input".
CONTROLLER_REASONS = PAYLOAD_REASONS | {
    "unexpected_topic",
    "bad_terminal_id",
    "terminal_mismatch",
    "unknown_terminal",
    "stale_session",
    "unknown_command",
    "ack_for_finished_broadcast",
    "terminal_not_targeted",
    "absurd_timestamp",
}
WIRE_MODELS: list[type[WireModel]] = [Command, Cancel, Ack, TerminalStatus, ControllerStatus, Heartbeat]
MODELS: list[type[BaseModel]] = [*WIRE_MODELS, Content, AudioRef]
FIELD_NAMES = sorted({name for model in MODELS for name in model.model_fields} | {"op"})
DOCUMENTED = [(name, json.loads(body)) for name, body in examples()]

# --- strategies: payloads -----------------------------------------------------------------------------

# Placeholders a mutation puts into a document, replaced after json.dumps by text JSON cannot
# produce from a Python value: numbers beyond float range or Python's int-conversion limit,
# nesting as deep as the decoder allows.
RAW = {
    '"@huge-int@"': "9" * 5000,
    '"@big-int@"': str(2**64),
    '"@huge-float@"': "1e999",
    '"@nan@"': "NaN",
    '"@-inf@"': "-Infinity",
    '"@deep-list@"': "[" * 5000 + "]" * 5000,
    '"@deep-object@"': '{"a":' * 900 + "1" + "}" * 900,
}
GARBAGE_TIMES = [
    "",
    "now",
    "2026-11-27",
    "2026-11-27T05:30:00",
    "2026-13-45T25:61:61Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "2026-11-27T05:30:00+24:00",
    "1e400",
    "NaN",
    "2026-11-27T05:30:00.9999999999999999999Z",
    "٢٠٢٦-١١-٢٧T05:30:00Z",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from([*GARBAGE_TIMES, "Infinity", "-0", "1", "v", "play", "cancel"]),
    st.sampled_from([s.strip('"') for s in RAW]),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=25,
)
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]


def dumps(document: Any) -> bytes:
    text = json.dumps(document, ensure_ascii=False)
    for placeholder, raw in RAW.items():
        text = text.replace(placeholder, raw)
    # A lone surrogate from a \ud800 escape becomes invalid UTF-8 here: more input for bad_json.
    return text.encode("utf-8", "surrogatepass")


def _containers(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(document, dict | list):
        yield path
        items = document.items() if isinstance(document, dict) else enumerate(document)
        for key, value in items:
            yield from _containers(value, (*path, key))


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


@st.composite
def mutated_documents(draw: st.DrawFn, names: tuple[str, ...] | None = None) -> Any:
    """A documented example with up to four mutations: a member dropped, retyped, replaced by
    garbage or an oversized string, an unknown member added, `v` changed."""
    document = json.loads(
        json.dumps(draw(st.sampled_from([d for n, d in DOCUMENTED if not names or n in names])))
    )
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 4]))):
        container = _at(document, draw(st.sampled_from(list(_containers(document)))))
        keys = list(container) if isinstance(container, dict) else list(range(len(container)))
        operation = draw(st.sampled_from(["drop", "retype", "time", "oversize", "add", "version"]))
        if operation == "version" and isinstance(document, dict):
            document["v"] = draw(st.sampled_from([2, 0, "1", 1.0, True, None, [1], "@huge-int@", 2**64]))
        elif operation == "add" and isinstance(container, dict):
            container[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=10))] = draw(json_values)
        elif not keys:
            continue
        elif operation == "drop":
            del container[draw(st.sampled_from(keys))]
        elif operation == "retype":
            container[draw(st.sampled_from(keys))] = draw(json_values)
        elif operation == "time":
            container[draw(st.sampled_from(keys))] = draw(
                st.sampled_from(GARBAGE_TIMES) | st.text(max_size=30)
            )
        elif operation == "oversize":
            container[draw(st.sampled_from(keys))] = draw(st.sampled_from("x界\x00")) * draw(
                st.integers(1, 600_000)
            )
    return document


@st.composite
def spliced(draw: st.DrawFn, payloads: st.SearchStrategy[bytes]) -> bytes:
    """A payload with invalid UTF-8 (or any bytes) inserted somewhere."""
    payload = draw(payloads)
    where = draw(st.integers(0, len(payload)))
    junk = draw(st.sampled_from(INVALID_UTF8) | st.binary(min_size=1, max_size=8))
    return payload[:where] + junk + payload[where:]


def payloads(names: tuple[str, ...] | None = None) -> st.SearchStrategy[bytes]:
    """Bytes, JSON of any shape, v1 objects with the protocol's member names, and mutated examples."""
    documents = mutated_documents(names).map(dumps)
    return st.one_of(
        st.binary(max_size=200),
        st.sampled_from([raw.encode() for raw in RAW.values()] + [b"", b"null", b"{}", b'{"v":1}']),
        json_values.map(dumps),
        st.fixed_dictionaries(
            {"v": st.just(1)}, optional={name: json_values for name in FIELD_NAMES if name != "v"}
        ).map(dumps),
        documents,
        documents,
        spliced(documents),
    )


# --- the terminal side --------------------------------------------------------------------------------


def decodes_or_says_why(parse: Callable[[bytes], object], payload: bytes) -> object | None:
    """What `parse` returns, or None after checking it refused with a documented, metric-safe reason."""
    try:
        return parse(payload)
    except PayloadError as exc:
        assert exc.reason in PAYLOAD_REASONS and METRIC_SAFE.fullmatch(exc.reason), exc.reason
        assert exc.detail
        return None


@FUZZ
@given(payload=payloads())
@example(payload=b'{"v": 1, "id": ' + b"9" * 5000 + b"}")
def test_every_message_parser_returns_a_model_or_a_documented_reason(payload: bytes) -> None:
    for model in WIRE_MODELS:
        decoded = decodes_or_says_why(partial(decode, model), payload)
        assert decoded is None or isinstance(decoded, model)
    command = decodes_or_says_why(decode_command, payload)
    event(f"command topic: {type(command).__name__ if command else 'refused'}")
    assert command is None or isinstance(command, Command | Cancel)
    heartbeat = decodes_or_says_why(decode_heartbeat, payload)
    if heartbeat is not None:
        assert isinstance(heartbeat, tuple) and isinstance(heartbeat[0], Heartbeat)


@FUZZ
@given(batch=st.lists(payloads(("Command", "Cancel")), min_size=1, max_size=6))
@example(batch=[b'{"v": 1, "id": "20261127T053000-1f3a9c0d2b7e", "priority": ' + b"9" * 5000 + b"}"])
def test_a_terminal_answers_any_command_payload_with_valid_acks(batch: list[bytes]) -> None:
    core = TerminalCore("sim-421202100001-1", TEST_KEYS)
    for payload in batch:
        # As it came (unsigned, so refused), and as the controller would have signed it, so the
        # state machine behind the signature check is fuzzed too.
        steps = [core.on_payload(payload, T0)]
        with contextlib.suppress(PayloadError):
            steps.append(core.on_payload(signed(decode_command(payload), T0), T0))
        for step in steps:
            event(f"acks: {', '.join(f'{a.stage}/{a.reason}' for a in step.acks) or 'none'}")
            for ack in step.acks:
                # What the terminal publishes must itself pass the controller's decoding.
                assert decode(Ack, encode(ack)) == ack
                if ack.stage is AckStage.REJECTED and ack.reason is not AckReason.EXPIRED:
                    assert ack.reason in TERMINAL_REFUSALS


TERMINAL_REFUSALS = {
    AckReason.BAD_PAYLOAD,
    AckReason.UNSUPPORTED_VERSION,
    AckReason.BUSY,
    AckReason.UNSIGNED,
    AckReason.UNKNOWN_KEY,
    AckReason.BAD_SIGNATURE,
    AckReason.KEY_NOT_VALID,
}


# --- the controller side ------------------------------------------------------------------------------

REGISTERED = ["sim-421202100001-1", "sim-421202100001-2"]
STRANGER = "sim-421202100099-1"
TRACKED_ID = "20261127T053000-1f3a9c0d2b7e"


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """A controller that is never started: handle_message needs only its memory (presence, the
    tracker, alarms), whose writes queue in the database writer unwritten."""
    database = tmp_path_factory.mktemp("fuzz") / "cunxiang.db"
    built = Controller(make_settings(f"sqlite:///{database}", "mqtt://127.0.0.1:1", topic_prefix="cx"))
    for terminal_id in REGISTERED:
        built.presence.register(terminal_id)
    now = datetime.now(UTC)
    built.tracker.track(
        LiveBroadcast(
            id=TRACKED_ID,
            issued_at=now,
            expires_at=now + timedelta(days=365),
            priority=42,
            regions=["421202100001"],
            payload=b"{}",
            states=dict.fromkeys(REGISTERED, DeliveryState.SENT),
        ),
        now,
    )
    yield built
    built.engine.dispose()


def rejections(metrics: Metrics) -> dict[str, float]:
    """cunxiang_mqtt_messages_rejected_total by reason, read from the controller's registry."""
    return {
        sample.labels["reason"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "cunxiang_mqtt_messages_rejected"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def expected_rejection(scheme: TopicScheme, topic: str, payload: bytes) -> str | None:
    """The reason the topic or the payload alone is refused for, if either is."""
    try:
        channel = scheme.parse_terminal_topic(topic).channel
        if channel is TerminalChannel.ACK:
            decode(Ack, payload)
        elif channel is TerminalChannel.STATUS:
            decode(TerminalStatus, payload)
        else:
            decode_heartbeat(payload)
    except (TopicError, PayloadError) as exc:
        return exc.reason
    return None


@st.composite
def terminal_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """A topic (mostly a terminal's channel, sometimes garbage) and a payload, mostly one of the
    documented messages of that channel, mutated, naming the topic's terminal and the tracked
    broadcast (so that it gets past the topic and sender checks to presence and the tracker)."""
    terminal = draw(st.sampled_from([*REGISTERED, STRANGER]))
    if not draw(st.integers(0, 9)):
        terminal = draw(st.text(max_size=12) | st.sampled_from(["", "+", "#", "UPPER", "a/b", "-a"]))
    channel = draw(st.sampled_from(TerminalChannel))
    topic = f"cx/v1/terminal/{terminal}/{channel}"
    if not draw(st.integers(0, 5)):
        topic = draw(
            st.sampled_from(
                [
                    f"cx/v1/terminal/{terminal}/cmd",
                    f"cx/v1/terminal/{terminal}/{channel}/",
                    f"cx/v1/controller/{terminal}/status",
                    f"cx/v2/terminal/{terminal}/{channel}",
                    f"fuzz/v1/terminal/{terminal}/{channel}",
                ]
            )
            | st.text(max_size=60)
        )
    if not draw(st.integers(0, 3)):
        return topic, draw(payloads())
    names = {"ack": ("Ack",), "status": ("TerminalStatus",), "heartbeat": ("Heartbeat",)}[channel]
    document = draw(mutated_documents(names))
    if isinstance(document, dict) and draw(st.integers(0, 3)):
        for member, value in [("terminal_id", terminal), ("command_id", TRACKED_ID)]:
            if member in document:
                document[member] = value
        if "at" in document and draw(st.booleans()):
            document["at"] = datetime.now(UTC).isoformat()
    return topic, dumps(document)


@FUZZ
@given(message=terminal_messages())
@example(message=("cx/v1/terminal/sim-421202100001-1/ack", b'{"v": 1, "at": ' + b"9" * 5000 + b"}"))
def test_the_controller_counts_every_bad_message_by_a_documented_reason(
    controller: Controller, message: tuple[str, bytes]
) -> None:
    topic, payload = message
    expected = expected_rejection(controller.topics, topic, payload)
    before = rejections(controller.metrics)
    controller.handle_message(topic, payload)
    after = rejections(controller.metrics)
    counted = {
        reason: after[reason] - before.get(reason, 0)
        for reason in after
        if after[reason] != before.get(reason)
    }
    # handle_message never raises: a defect would surface only as this label.
    assert "internal_error" not in counted
    event(f"rejected: {', '.join(counted) or 'no'}")
    if expected is not None:
        assert counted == {expected: 1}
    else:
        assert sum(counted.values()) <= 1 and set(counted) <= CONTROLLER_REASONS, counted


# --- the tracker under random acknowledgements --------------------------------------------------------

AT = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
LIVE_ID = "20261127T050000-bbbbbbbbbbbb"
TARGETED = ["t-1", "t-2", "t-3"]
_RANK = {DeliveryState.PENDING: 0, DeliveryState.SENT: 1, DeliveryState.RECEIVED: 2, DeliveryState.PLAYING: 3}
# A pre-empted programme is resumed by its terminal (docs/protocol.md), so it may leave `preempted`.
_AFTER_RESUMED = {
    DeliveryState.PLAYING,
    DeliveryState.COMPLETED,
    DeliveryState.FAILED,
    DeliveryState.CANCELLED,
}


@pytest.fixture(scope="module")
def db_writer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DbWriter]:
    """A writer that is never run: the tracker's writes just queue."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'tracker.db'}")
    yield DbWriter(engine, Metrics(), interval=1.0, max_rows=1_000_000)
    engine.dispose()


@st.composite
def acks(draw: st.DrawFn) -> Ack:
    stage = draw(st.sampled_from(AckStage))
    needs_reason = stage in {AckStage.PREEMPTED, AckStage.REJECTED, AckStage.FAILED}
    return Ack(
        command_id=draw(st.sampled_from([LIVE_ID, TRACKED_ID])),
        terminal_id=draw(st.sampled_from([*TARGETED, "t-9"])),
        stage=stage,
        reason=draw(st.sampled_from(AckReason)) if needs_reason else None,
        by=draw(st.none() | st.just(TRACKED_ID)),
        at=AT + draw(st.timedeltas(min_value=timedelta(hours=-3), max_value=timedelta(hours=3))),
    )


def moved_backwards(old: DeliveryState, new: DeliveryState, resumable: bool, owed_cancel: bool) -> bool:
    if old is new:
        return False
    if old is DeliveryState.PREEMPTED and resumable:
        return new not in _AFTER_RESUMED
    if old in FINAL_STATES:
        # Marked cancelled before the terminal answered: its answer says how it really ended.
        return not (owed_cancel and old is DeliveryState.CANCELLED and new in FINAL_STATES)
    return _RANK.get(new, 4) < _RANK[old]


@FUZZ
@given(
    resumable=st.booleans(),
    steps=st.lists(
        acks() | st.sampled_from(["sent", "cancel"]) | st.timedeltas(timedelta(0), timedelta(hours=1)),
        max_size=25,
    ),
)
def test_random_acks_never_move_a_delivery_backwards(
    db_writer: DbWriter, resumable: bool, steps: list[Ack | str | timedelta]
) -> None:
    tracker = DeliveryTracker(db_writer, Metrics(), playback_grace=timedelta(minutes=10))
    live = LiveBroadcast(
        id=LIVE_ID,
        issued_at=AT,
        expires_at=AT + timedelta(minutes=30),
        priority=1 if resumable else 12,
        regions=["421202100001"],
        payload=b"{}",
        states=dict.fromkeys(TARGETED, DeliveryState.PENDING),
        resumable=resumable,
    )
    tracker.track(live, AT)
    for step in steps:
        before, owed, was_resumable = dict(live.states), set(live.owed_cancel), live.resumable
        if isinstance(step, Ack):
            outcome = tracker.on_ack(step, AT + timedelta(minutes=1))
            assert outcome is None or outcome in CONTROLLER_REASONS
        elif step == "sent":
            tracker.mark_sent(live, None, AT)
        elif isinstance(step, timedelta):
            tracker.sweep(AT + step)
        elif tracker.find(live.id) is live:
            tracker.cancel(live, b"{}", TRACKED_ID, AT)
        assert set(live.states) == set(TARGETED)
        for terminal, old in before.items():
            new = live.states[terminal]
            assert not moved_backwards(old, new, was_resumable, terminal in owed), (terminal, old, new)
        if tracker.find(live.id) is live:
            assert live.open == sum(1 for s in live.states.values() if not live.final(s))


# --- round trip ---------------------------------------------------------------------------------------

command_ids = st.from_regex(COMMAND_ID_PATTERN, fullmatch=True)
terminal_ids = st.from_regex(TERMINAL_ID_PATTERN, fullmatch=True)
region_codes = st.from_regex(REGION_CODE_PATTERN, fullmatch=True)
# Offsets in whole minutes: ISO 8601 (and pydantic) has no seconds in an offset.
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
aware_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC) | offsets
)
texts = st.text(max_size=80)
audio = st.builds(
    AudioRef,
    url=st.sampled_from(["http://", "https://"]).flatmap(lambda s: texts.map(lambda t: s + t)),
    size=st.integers(min_value=1, max_value=2**53),
    sha256=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    duration_s=st.none() | st.floats(min_value=0, max_value=86_400, exclude_min=True),
)
contents = st.builds(
    Content,
    text=st.text(min_size=1, max_size=200),
    language=st.from_regex(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", fullmatch=True),
    audio=st.none() | audio,
) | st.builds(Content, audio=audio)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    kind = draw(st.sampled_from(BroadcastKind))
    level = draw(st.sampled_from(EmergencyLevel)) if kind is BroadcastKind.EMERGENCY else None
    issuer = draw(region_codes)
    issued = draw(aware_times.filter(lambda t: t.astimezone(UTC).year < 9999))
    id_ = draw(command_ids)
    return Command(
        id=id_,
        kind=kind,
        level=level,
        issuer_region=issuer,
        priority=command_priority(kind, level, issuer),
        issued_at=issued,
        expires_at=issued + draw(st.timedeltas(timedelta(microseconds=1), timedelta(days=300))),
        content=draw(contents),
        volume=draw(st.none() | st.integers(0, 100)),
        repeat=draw(st.integers(1, 10)),
        supersedes=draw(
            st.none() | st.lists(command_ids.filter(lambda c: c != id_), min_size=1, max_size=32, unique=True)
        ),
        status=draw(st.sampled_from(BroadcastStatus)),
    )


@st.composite
def valid_acks(draw: st.DrawFn) -> Ack:
    stage = draw(st.sampled_from(AckStage))
    needs_reason = stage in {AckStage.PREEMPTED, AckStage.REJECTED, AckStage.FAILED}
    return Ack(
        command_id=draw(command_ids),
        terminal_id=draw(terminal_ids),
        stage=stage,
        reason=draw(st.sampled_from(AckReason)) if needs_reason else None,
        detail=draw(st.none() | st.text(max_size=500)),
        by=draw(st.none() | command_ids),
        at=draw(aware_times),
    )


sessions = st.integers(0, SESSION_MAX)
wire_messages: st.SearchStrategy[WireModel] = st.one_of(
    commands(),
    st.builds(
        Cancel,
        id=command_ids,
        op=st.just("cancel"),
        cancels=command_ids,
        issuer_region=region_codes,
        issued_at=aware_times,
    ),
    valid_acks(),
    st.builds(
        TerminalStatus,
        terminal_id=terminal_ids,
        state=st.sampled_from(Presence),
        session=sessions,
        region=region_codes,
        firmware=st.none() | st.text(max_size=64),
        heartbeat_interval_s=st.integers(1, 3600),
        at=aware_times,
    ),
    st.builds(
        ControllerStatus,
        controller_id=terminal_ids,
        state=st.sampled_from(Presence),
        session=sessions,
        at=aware_times,
    ),
    st.builds(
        Heartbeat,
        terminal_id=terminal_ids,
        at=aware_times,
        uptime_s=st.none() | st.integers(min_value=0, max_value=2**63),
        volume=st.none() | st.integers(0, 100),
        amplifier=st.none() | st.sampled_from(Amplifier),
        speaker=st.none() | st.sampled_from(Speaker),
        supply=st.none() | st.sampled_from(Supply),
        battery_pct=st.none() | st.integers(0, 100),
        temperature_c=st.none() | st.floats(-60, 150),
        signal_dbm=st.none() | st.integers(-150, 0),
        firmware=st.none() | st.text(max_size=64),
        playing=st.none() | command_ids,
    ),
)


@FUZZ
@given(message=wire_messages)
def test_every_valid_message_survives_encoding_and_decoding(message: WireModel) -> None:
    payload = encode(message)
    assert decode(type(message), payload) == message
    if isinstance(message, Command | Cancel):
        assert decode_command(payload) == message
    if isinstance(message, Heartbeat):
        assert decode_heartbeat(payload) == (message, [])


def test_every_wire_model_is_fuzzed() -> None:
    wire_models = {
        value
        for value in vars(messages).values()
        if isinstance(value, type)
        and issubclass(value, WireModel)
        and value not in (WireModel, messages.SignedMessage)
    }
    assert wire_models == set(WIRE_MODELS)
