"""Builders of valid protocol v1 messages for the pure unit tests.

Every builder returns a message that validates; pass keyword arguments to override any member.
`make_command` works out the consistent `priority` itself unless one is given explicitly.
"""

import json
import math
import struct
import wave
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.messages import (
    Ack,
    AckReason,
    AckStage,
    AudioRef,
    Cancel,
    Command,
    Content,
    ControllerStatus,
    Heartbeat,
    Presence,
    TerminalStatus,
    encode,
)
from devices.priority import BroadcastKind, EmergencyLevel, command_priority
from devices.signing import KeySet, PublicKey, Signer

T0 = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
"""A fixed 'now' for every test: nothing here reads the clock."""

PROVINCE = "42"
CITY = "4212"
COUNTY = "421202"
TOWNSHIP = "421202001"
VILLAGE = "421202001002"

TERMINAL_ID = "t-421202001002-01"
CONTROLLER_ID = "controller-1"
SHA256_OF_NOTHING = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def command_id(n: int) -> str:
    """A valid command id, distinct for each `n`."""
    return f"cmd-{n:08d}"


def make_audio(**overrides: Any) -> AudioRef:
    values: dict[str, Any] = {
        "url": "https://media.example.org/a/flood-warning.mp3",
        "size": 48_000,
        "sha256": SHA256_OF_NOTHING,
    }
    values.update(overrides)
    return AudioRef(**values)


def make_content(**overrides: Any) -> Content:
    values: dict[str, Any] = {"text": "明天上午九点村委会开会。"}
    values.update(overrides)
    return Content(**values)


def make_command(
    id: str = "cmd-00000001",
    *,
    kind: BroadcastKind = BroadcastKind.NOTICE,
    level: EmergencyLevel | None = None,
    issuer_region: str = COUNTY,
    priority: int | None = None,
    issued_at: datetime = T0,
    expires_at: datetime | None = None,
    expires_in: timedelta = timedelta(minutes=10),
    content: Content | None = None,
    **overrides: Any,
) -> Command:
    """A valid command; `priority` defaults to the one its kind, level and issuer imply."""
    if priority is None:
        priority = command_priority(kind, level, issuer_region)
    return Command(
        id=id,
        kind=kind,
        level=level,
        issuer_region=issuer_region,
        priority=priority,
        issued_at=issued_at,
        expires_at=expires_at if expires_at is not None else issued_at + expires_in,
        content=content if content is not None else make_content(),
        **overrides,
    )


def make_emergency(
    id: str = "cmd-00000002",
    level: EmergencyLevel = EmergencyLevel.I,
    **overrides: Any,
) -> Command:
    return make_command(id, kind=BroadcastKind.EMERGENCY, level=level, **overrides)


def make_ack(
    stage: AckStage = AckStage.RECEIVED,
    reason: AckReason | None = None,
    **overrides: Any,
) -> Ack:
    values: dict[str, Any] = {
        "command_id": "cmd-00000001",
        "terminal_id": TERMINAL_ID,
        "stage": stage,
        "reason": reason,
        "at": T0,
    }
    values.update(overrides)
    return Ack(**values)


def make_terminal_status(**overrides: Any) -> TerminalStatus:
    values: dict[str, Any] = {
        "terminal_id": TERMINAL_ID,
        "state": Presence.ONLINE,
        "session": 3,
        "region": VILLAGE,
        "at": T0,
    }
    values.update(overrides)
    return TerminalStatus(**values)


def make_controller_status(**overrides: Any) -> ControllerStatus:
    values: dict[str, Any] = {
        "controller_id": CONTROLLER_ID,
        "state": Presence.ONLINE,
        "session": 1,
        "at": T0,
    }
    values.update(overrides)
    return ControllerStatus(**values)


def make_heartbeat(**overrides: Any) -> Heartbeat:
    values: dict[str, Any] = {
        "terminal_id": TERMINAL_ID,
        "at": T0,
        "uptime_s": 3600,
        "volume": 70,
        "amplifier": "ok",
        "speaker": "ok",
        "supply": "mains",
        "firmware": "1.4.2",
    }
    values.update(overrides)
    return Heartbeat(**values)


def as_dict(message: Any) -> dict[str, Any]:
    """The JSON object a message is sent as, ready to be tampered with."""
    data: dict[str, Any] = json.loads(encode(message))
    return data


def to_payload(data: Any) -> bytes:
    """UTF-8 JSON bytes of any value (a tampered message, an array, ...)."""
    return json.dumps(data, ensure_ascii=False).encode()


# The test controller's key: fixed, so payloads built in tests are reproducible.
TEST_SIGNER = Signer("test-key", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
TEST_KEYS = KeySet(
    keys=[
        PublicKey(
            kid="test-key", public_key=TEST_SIGNER.public_key(), valid_from=datetime(2000, 1, 1, tzinfo=UTC)
        )
    ]
)


def signed(message: Command | Cancel, sent_at: datetime | None = None) -> bytes:
    """The payload the controller would send: stamped `sent_at` (default: its issue time) and signed."""
    return encode(TEST_SIGNER.sign(message, sent_at or message.issued_at))


def tone() -> bytes:
    """A second of a 8 kHz sine tone as WAV: real audio for uploads and players."""
    buffer = BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(8000)))
    return buffer.getvalue()
