"""Every message of protocol v1 as a pydantic model, with decoding that never lets bad input through.

Payloads are UTF-8 JSON objects carrying `"v": 1`. Times are ISO 8601 in UTC. Unknown members are
ignored on decoding, so a v1 reader accepts messages from a newer minor revision that only adds.
"""

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from devices import PROTOCOL_VERSION
from devices.errors import PayloadError
from devices.identifiers import REGION_CODE_PATTERN, TERMINAL_ID_PATTERN
from devices.priority import BroadcastKind, EmergencyLevel, command_priority

COMMAND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{7,63}$"
_COMMAND_ID = re.compile(COMMAND_ID_PATTERN)
DETAIL_MAX = 500
SUPERSEDES_MAX = 32
# Sessions are 64-bit (milliseconds since 1970 fit for 292 million years).
SESSION_MAX = 2**63 - 1

TerminalId = Annotated[str, Field(pattern=TERMINAL_ID_PATTERN)]
RegionCode = Annotated[str, Field(pattern=REGION_CODE_PATTERN)]
CommandId = Annotated[str, Field(pattern=COMMAND_ID_PATTERN)]


class WireModel(BaseModel):
    """Base of every message: immutable, versioned, tolerant of members it does not know."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: Literal[1] = 1


class AudioRef(BaseModel):
    """Audio a terminal downloads over HTTP; it verifies the size and SHA-256 before playing."""

    model_config = ConfigDict(frozen=True)

    url: Annotated[str, Field(pattern=r"^https?://", max_length=2048)]
    size: Annotated[int, Field(gt=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    duration_s: Annotated[float, Field(gt=0, le=86_400)] | None = None
    """how long it plays, when known"""


class Content(BaseModel):
    """What to play: text to speak, recorded audio, or both (audio first, text as fallback)."""

    model_config = ConfigDict(frozen=True)

    text: Annotated[str, Field(min_length=1, max_length=4000)] | None = None
    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "zh-CN"
    audio: AudioRef | None = None

    @model_validator(mode="after")
    def _has_something_to_play(self) -> Self:
        if self.text is None and self.audio is None:
            raise ValueError("content needs text or audio")
        return self


class Signature(BaseModel):
    """Who signed a command (`kid`: which of the controller's keys) and the Ed25519 signature of its
    signed bytes, base64url without padding (see devices/signing.py)."""

    model_config = ConfigDict(frozen=True)

    kid: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    value: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{86}$")]


class SignedMessage(WireModel):
    """What the controller sends on a command topic: signed, and stamped with when this copy was sent."""

    sent_at: AwareDatetime | None = None
    """when this copy was sent (each retry is stamped and signed anew); a terminal refuses a copy
    sent too far from its own clock"""
    sig: Signature | None = None

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: sorted keys, no spaces, UTF-8, absent members left out,
        `sig` left out. Computed from the decoded values, so a time sent as `+00:00` and one sent as
        `Z` give the same bytes: signer and verifier agree however a relay re-serialised the JSON."""
        return canonical_json(self.model_dump(mode="json", exclude_none=True, exclude={"sig"}))


class BroadcastStatus(StrEnum):
    """Whether a broadcast is real (CAP's status): a terminal announces exercises and tests as such."""

    ACTUAL = "actual"
    EXERCISE = "exercise"
    """a drill (演练): played in full, announced as a drill"""
    TEST = "test"
    """a technical test of the system (测试)"""


# Spoken before the content of an exercise or a test, so no listener takes a drill for the real thing.
_ANNOUNCEMENTS = {
    BroadcastStatus.EXERCISE: {
        "zh": "演练，演练。以下是应急演练信息。",
        "en": "This is a drill. This is a drill.",
    },
    BroadcastStatus.TEST: {
        "zh": "测试，测试。以下是系统测试信息。",
        "en": "This is a test. This is only a test.",
    },
}


def announcement(status: BroadcastStatus, language: str) -> str | None:
    """What a terminal says before an exercise or test broadcast (none for an actual one), in the
    content's language when we have it, else in Chinese."""
    if status is BroadcastStatus.ACTUAL:
        return None
    words = _ANNOUNCEMENTS[status]
    return words.get(language.split("-")[0].lower(), words["zh"])


class Command(SignedMessage):
    """An instruction to play. Never retained; terminals de-duplicate by `id`."""

    id: CommandId
    op: Literal["play"] = "play"
    kind: BroadcastKind
    level: EmergencyLevel | None = None
    issuer_region: RegionCode
    priority: int
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    content: Content
    volume: Annotated[int, Field(ge=0, le=100)] | None = None
    repeat: Annotated[int, Field(ge=1, le=10)] = 1
    supersedes: Annotated[list[CommandId], Field(min_length=1, max_length=SUPERSEDES_MAX)] | None = None
    """An update: the earlier commands it replaces (CAP's `references`): the one it updates, and
    that one's own predecessors still going, for terminals that missed an update in between."""
    status: BroadcastStatus = BroadcastStatus.ACTUAL
    """`exercise` and `test` commands are announced as such before their content (`announcement`)"""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        expected = command_priority(self.kind, self.level, self.issuer_region)
        if self.priority != expected:
            raise ValueError(f"priority {self.priority} does not match kind/level/issuer ({expected})")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        if self.supersedes is not None and (
            self.id in self.supersedes or len(set(self.supersedes)) < len(self.supersedes)
        ):
            raise ValueError("supersedes must name other commands, each once")
        return self

    @property
    def resumable(self) -> bool:
        """Whether the command is resumed after something pre-empts it (programmes only)."""
        return self.kind is BroadcastKind.PROGRAMME


class Cancel(SignedMessage):
    """An instruction to stop command `cancels` if it is playing, and never to start it. Never retained."""

    id: CommandId
    op: Literal["cancel"]
    cancels: CommandId
    issuer_region: RegionCode
    issued_at: AwareDatetime


class AckStage(StrEnum):
    """How far a terminal got with a command; the last five end it."""

    RECEIVED = "received"
    PLAYING = "playing"
    COMPLETED = "completed"
    PREEMPTED = "preempted"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AckReason(StrEnum):
    """Why a command was rejected, failed or pre-empted."""

    EXPIRED = "expired"
    BUSY = "busy"
    BAD_PAYLOAD = "bad_payload"
    UNSUPPORTED_VERSION = "unsupported_version"
    PLAYBACK_ERROR = "playback_error"
    HIGHER_PRIORITY = "higher_priority"
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    KEY_NOT_VALID = "key_not_valid"
    STALE = "stale"
    """sent too far from the terminal's clock: a replayed copy, or a clock that needs setting"""


_STAGES_NEEDING_REASON = {AckStage.PREEMPTED, AckStage.REJECTED, AckStage.FAILED}
FINAL_STAGES = frozenset(
    {AckStage.COMPLETED, AckStage.PREEMPTED, AckStage.REJECTED, AckStage.FAILED, AckStage.CANCELLED}
)


class Ack(WireModel):
    """A terminal's report on one command, published QoS 1 on its own ack topic."""

    command_id: CommandId
    terminal_id: TerminalId
    stage: AckStage
    reason: AckReason | None = None
    detail: Annotated[str, Field(max_length=DETAIL_MAX)] | None = None
    by: CommandId | None = None
    at: AwareDatetime

    @model_validator(mode="after")
    def _reason_when_needed(self) -> Self:
        if (self.reason is not None) != (self.stage in _STAGES_NEEDING_REASON):
            raise ValueError(f"stage {self.stage} {'needs' if self.reason is None else 'takes no'} reason")
        return self


class Presence(StrEnum):
    """A terminal's or controller's availability. `lost` is what the broker's will says."""

    ONLINE = "online"
    OFFLINE = "offline"
    LOST = "lost"


class TerminalStatus(WireModel):
    """Retained birth (`online`), clean goodbye (`offline`) and will (`lost`) of one terminal.

    `session` grows with every connection, so a late will of an earlier session cannot mark a
    terminal lost after it came back.
    """

    terminal_id: TerminalId
    state: Presence
    session: Annotated[int, Field(ge=0, le=SESSION_MAX)]
    region: RegionCode
    firmware: Annotated[str, Field(max_length=64)] | None = None
    heartbeat_interval_s: Annotated[int, Field(ge=1, le=3600)] = 30
    at: AwareDatetime


class ControllerStatus(WireModel):
    """The controller's retained status; terminals may show a 'no controller' indication from it."""

    controller_id: TerminalId
    state: Presence
    session: Annotated[int, Field(ge=0, le=SESSION_MAX)]
    at: AwareDatetime


class Amplifier(StrEnum):
    OK = "ok"
    FAULT = "fault"
    OFF = "off"


class Speaker(StrEnum):
    OK = "ok"
    OPEN_CIRCUIT = "open_circuit"
    SHORT_CIRCUIT = "short_circuit"


class Supply(StrEnum):
    MAINS = "mains"
    BATTERY = "battery"
    SOLAR = "solar"


class Heartbeat(WireModel):
    """Periodic health telemetry, QoS 0 (a lost one is replaced by the next).

    Only `terminal_id` and `at` are required: a terminal reports what its hardware can measure.
    """

    terminal_id: TerminalId
    at: AwareDatetime
    uptime_s: Annotated[int, Field(ge=0)] | None = None
    volume: Annotated[int, Field(ge=0, le=100)] | None = None
    amplifier: Amplifier | None = None
    speaker: Speaker | None = None
    supply: Supply | None = None
    battery_pct: Annotated[int, Field(ge=0, le=100)] | None = None
    temperature_c: Annotated[float, Field(ge=-60, le=150)] | None = None
    signal_dbm: Annotated[int, Field(ge=-150, le=0)] | None = None
    firmware: Annotated[str, Field(max_length=64)] | None = None
    playing: CommandId | None = None
    clock_skew_s: Annotated[float, Field(ge=-1e9, le=1e9)] | None = None
    """the terminal's clock minus the controller's, as last measured from a command's `sent_at`
    (network delay included: tenths of a second)"""


_HEARTBEAT_REQUIRED = frozenset({"v", "terminal_id", "at"})


def decode_heartbeat(payload: bytes | bytearray | str) -> tuple[Heartbeat, list[str]]:
    """Decode a heartbeat, keeping what is valid: a telemetry member out of range or of the wrong
    type is dropped, and named in the list returned, rather than losing the whole heartbeat.
    Raises PayloadError if the heartbeat is unusable (not JSON, or no valid terminal id and time)."""
    data = _load(payload)
    dropped: list[str] = []
    for _ in range(len(data)):
        try:
            return Heartbeat.model_validate(data), dropped
        except ValidationError as exc:
            bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
            if not bad or bad & _HEARTBEAT_REQUIRED:
                break
            dropped.extend(sorted(bad))
            data = {k: v for k, v in data.items() if k not in bad}
    return _validate(Heartbeat, data), dropped


def is_command_id(value: object) -> bool:
    return isinstance(value, str) and _COMMAND_ID.fullmatch(value) is not None


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode(message: WireModel) -> bytes:
    """The payload bytes of a message, with absent optional members left out."""
    return message.model_dump_json(exclude_none=True).encode()


M = TypeVar("M", bound=WireModel)


_AS_ENCODED = b'{"v":1,'
_FAST_MAX = 4096
"""bytes: shorter than any number Python's own JSON parser refuses (sys.get_int_max_str_digits)"""


def decode(model: type[M], payload: bytes | bytearray | str) -> M:
    """Decode a payload; raises PayloadError with a metric-safe `reason` and a readable detail.

    A payload in the form `encode` writes (it starts `{"v":1,`, names `v` nowhere else, has no
    escapes and at most `_FAST_MAX` bytes) is validated straight from its bytes, which takes about
    half the time (a controller decodes a county's acknowledgements at once): its version is then
    the integer 1, as `_load` requires, and the result is what the general path gives. Anything
    else, and any payload that fails there, takes the general path, which says why it fails.
    """
    if (
        type(payload) is bytes
        and len(payload) <= _FAST_MAX
        and payload.startswith(_AS_ENCODED)
        and payload.count(b'"v"') == 1
        and b"\\" not in payload
    ):
        try:
            return model.model_validate_json(payload)
        except ValidationError:
            pass
    return _validate(model, _load(payload))


def decode_command(payload: bytes | bytearray | str) -> "Command | Cancel":
    """Decode what arrives on a command topic: a `play` Command or a `cancel`, by its `op`."""
    data = _load(payload)
    return _validate(Cancel, data) if data.get("op") == "cancel" else _validate(Command, data)


def _load(payload: bytes | bytearray | str) -> dict[str, Any]:
    try:
        text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8")
        data = json.loads(text)
    except ValueError as exc:
        # Not only UnicodeDecodeError and JSONDecodeError: a number of more digits than Python
        # converts (sys.get_int_max_str_digits, 4300) raises a bare ValueError.
        raise PayloadError("bad_json", f"payload is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("bad_json", "payload nests too deeply") from None
    if not isinstance(data, dict):
        raise PayloadError("bad_payload", "payload is not a JSON object")
    version = data.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise PayloadError("unsupported_version", f"protocol version {str(version)[:20]!r}, expected 1")
    return data


def _validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or model.__name__
        # A stage this revision does not know is worth telling apart: a newer terminal, or a bug.
        reason = "unknown_stage" if model is Ack and first["loc"] == ("stage",) else "bad_payload"
        raise PayloadError(reason, f"{model.__name__}.{where}: {first['msg']}") from None


def now_utc() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)
