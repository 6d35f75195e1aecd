"""docs/protocol.md is the contract: every example in it parses and validates against the code."""

import re
from datetime import timedelta
from pathlib import Path

import pytest

from devices import messages
from devices.messages import Command, WireModel, decode, encode
from devices.priority import BroadcastKind, EmergencyLevel, command_priority
from devices.signing import KeySet, Refusal, refusal
from devices.topics import TopicScheme

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\s*```json\n(.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    return EXAMPLE.findall(DOCUMENT.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("model_name", "body"), examples(), ids=lambda v: v if len(v) < 30 else "")
def test_document_example_is_a_valid_message(model_name: str, body: str) -> None:
    model = getattr(messages, model_name)
    decoded = decode(model, body.encode())
    assert decode(model, encode(decoded)) == decoded


def test_every_wire_message_has_an_example_in_the_document() -> None:
    wire_models = {
        name
        for name, value in vars(messages).items()
        if isinstance(value, type)
        and issubclass(value, WireModel)
        and value not in (WireModel, messages.SignedMessage)
    }
    assert wire_models == {name for name, _ in examples()}


def test_documented_subscriptions_of_a_village_terminal_match_the_code() -> None:
    text = DOCUMENT.read_text(encoding="utf-8")
    subscriptions = TopicScheme().terminal_subscriptions("sim-421202100001-1", "421202100001")
    for topic in subscriptions:
        documented = topic.replace("sim-421202100001-1", "<id>")
        assert f"`{documented}`" in text


@pytest.mark.parametrize(
    ("kind", "level", "issuer", "documented"),
    [
        (BroadcastKind.EMERGENCY, EmergencyLevel.II, "421202", 42),
        (BroadcastKind.NOTICE, None, "421202100", 11),
        (BroadcastKind.PROGRAMME, None, "421202100001", 0),
    ],
)
def test_documented_priority_examples_match_the_code(
    kind: BroadcastKind, level: EmergencyLevel | None, issuer: str, documented: int
) -> None:
    assert command_priority(kind, level, issuer) == documented


def test_documented_controller_wildcards_match_the_code() -> None:
    text = DOCUMENT.read_text(encoding="utf-8")
    for topic in TopicScheme().controller_subscriptions():
        assert f"`{topic}`" in text


def test_the_documented_signed_command_verifies_against_the_documented_key_set() -> None:
    text = DOCUMENT.read_text(encoding="utf-8")
    keyset = re.search(r"<!-- keyset -->\s*```json\n(.*?)```", text, re.S)
    assert keyset is not None
    keys = KeySet.model_validate_json(keyset.group(1))
    signed = [
        decode(Command, body.encode()) for name, body in examples() if name == "Command" and '"sig"' in body
    ]
    assert len(signed) == 1
    command = signed[0]
    assert command.sent_at is not None
    assert refusal(command, keys, command.sent_at, timedelta(minutes=5)) is None
    tampered = command.model_copy(update={"repeat": 1})
    assert refusal(tampered, keys, command.sent_at, timedelta(minutes=5)) is Refusal.BAD_SIGNATURE
