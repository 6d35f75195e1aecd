"""Database tables. Times are stored and returned as timezone-aware UTC."""

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, LargeBinary, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from devices.messages import now_utc


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite, which keeps no zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_column(**kwargs: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kwargs)


class BroadcastState(StrEnum):
    """A broadcast's life: persisted, published, then over."""

    ACCEPTED = "accepted"
    ACTIVE = "active"
    CANCELLING = "cancelling"
    FINISHED = "finished"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    """replaced by an update; stays so while its last terminals report, and after"""
    AWAITING_APPROVAL = "awaiting_approval"
    """held until a second person approves it (the two-person rule); nothing sent yet"""
    REJECTED = "rejected"
    """an approver refused it; nothing was sent"""
    APPROVAL_EXPIRED = "approval_expired"
    """no approver answered in time; nothing was sent"""


SENDING_STATES = (BroadcastState.ACCEPTED, BroadcastState.ACTIVE)
"""a broadcast that is going out: it can be cancelled or superseded"""
NEVER_SENT = (BroadcastState.REJECTED, BroadcastState.APPROVAL_EXPIRED)
"""held for approval and never approved: no terminal ever heard of it"""


def broadcast_over(state: str, finished_at: datetime | None) -> bool:
    """Whether nothing more will change for a broadcast. A superseded one still hears how it ended
    on each terminal until it is finished too."""
    if state == BroadcastState.SUPERSEDED:
        return finished_at is not None
    return state in (
        BroadcastState.FINISHED,
        BroadcastState.EXPIRED,
        BroadcastState.CANCELLED,
        BroadcastState.REJECTED,
        BroadcastState.APPROVAL_EXPIRED,
    )


class Region(SQLModel, table=True):
    code: str = Field(primary_key=True, max_length=12)
    name: str = Field(max_length=100)
    level: str = Field(max_length=16)
    parent_code: str | None = Field(default=None, index=True, max_length=12)


class Terminal(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    region_code: str = Field(index=True, max_length=12, foreign_key="region.code")
    kind: str = Field(default="outdoor_speaker", max_length=32)
    name: str | None = Field(default=None, max_length=100)
    latitude: float | None = None
    longitude: float | None = None
    installed_on: date | None = None
    notes: str | None = Field(default=None, max_length=1000)
    presence: str = Field(default="unknown", max_length=16)
    presence_since: datetime | None = _utc_column(default=None)
    session: int | None = Field(default=None, sa_type=BigInteger)
    firmware: str | None = Field(default=None, max_length=64)
    secret_hash: str | None = Field(
        default=None, max_length=200, description="the MQTT password, hashed in Mosquitto's $7$ format"
    )
    credentials_issued_at: datetime | None = _utc_column(default=None)
    created_at: datetime = _utc_column(default_factory=now_utc)
    decommissioned_at: datetime | None = _utc_column(
        default=None, description="taken out of service: no longer targeted or tracked; its history stays"
    )


class TerminalGroup(SQLModel, table=True):
    """An operator-defined set of regions and terminals, e.g. the villages along a river."""

    __tablename__ = "terminal_group"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=100)
    description: str | None = Field(default=None, max_length=1000)
    regions: list[str] = Field(sa_column=Column(JSON, nullable=False))
    terminals: list[str] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _utc_column(default_factory=now_utc)
    updated_at: datetime = _utc_column(default_factory=now_utc)


class Broadcast(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)
    level: int | None = None
    issuer_region: str = Field(max_length=12)
    regions: list[str] = Field(
        sa_column=Column(JSON, nullable=False),
        description="the region topics it was published to (its own regions and its groups')",
    )
    groups: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    terminal_ids: list[str] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="terminals addressed one by one (outside its regions), on their own topics",
    )
    supersedes: str | None = Field(default=None, max_length=64, description="the broadcast it updates")
    not_before: datetime | None = _utc_column(
        default=None, description="staged ahead (a scheduled run): not published before this time"
    )
    superseded_by: str | None = Field(default=None, max_length=64, description="the update that replaced it")
    text: str | None = None
    event: str | None = Field(default=None, max_length=100, description="what it is about (CAP's event)")
    priority: int
    issued_at: datetime = _utc_column()
    expires_at: datetime = _utc_column(index=True)
    state: str = Field(default=BroadcastState.ACCEPTED, max_length=24, index=True)
    terminals: int = 0
    command: str = Field(description="the exact command payload, republished byte for byte")
    cancel_command: str | None = Field(default=None, description="the cancel payload, once cancelled")
    finished_at: datetime | None = _utc_column(default=None)
    status: str | None = Field(default="actual", max_length=16, description="actual, exercise or test")
    created_by: str | None = Field(default=None, max_length=80, index=True, description="who asked for it")
    request: str | None = Field(
        default=None, description="the request as given, kept while it awaits approval to build it from then"
    )
    approval_deadline: datetime | None = _utc_column(default=None)
    decided_by: str | None = Field(default=None, max_length=80, description="who approved or rejected it")
    decided_at: datetime | None = _utc_column(default=None)
    correction_of: str | None = Field(
        default=None, max_length=64, description="the broadcast this one declares a false alarm"
    )


class Delivery(SQLModel, table=True):
    """One terminal's part in one broadcast."""

    broadcast_id: str = Field(primary_key=True, foreign_key="broadcast.id", max_length=64)
    terminal_id: str = Field(primary_key=True, max_length=64, index=True)
    region_code: str = Field(max_length=12)
    state: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=32)
    detail: str | None = Field(default=None, max_length=500)
    by_command: str | None = Field(
        default=None, max_length=64, description="the command that pre-empted or blocked it"
    )
    updated_at: datetime = _utc_column()
    sent_at: datetime | None = _utc_column(default=None)
    received_at: datetime | None = _utc_column(default=None)
    playing_at: datetime | None = _utc_column(default=None)
    finished_at: datetime | None = _utc_column(default=None, description="when it reached a final state")


class PresenceEvent(SQLModel, table=True):
    """One change of a terminal's presence, for its history. While a terminal flaps, its changes
    are summed up by a `flapping` event and a `stable` one instead of a row each."""

    __tablename__ = "presence_event"

    id: int | None = Field(default=None, primary_key=True)
    terminal_id: str = Field(index=True, max_length=64)
    at: datetime = _utc_column(index=True)
    presence: str = Field(max_length=16)
    reason: str = Field(
        max_length=32, description="birth, goodbye, will, heartbeat, heartbeat_timeout, flapping, stable"
    )
    session: int | None = Field(default=None, sa_type=BigInteger)


class Alarm(SQLModel, table=True):
    """A fault a terminal reported, from when its heartbeats first showed it until they no longer did."""

    id: str = Field(primary_key=True, max_length=32)
    terminal_id: str = Field(index=True, max_length=64)
    kind: str = Field(max_length=32)
    detail: str | None = Field(default=None, max_length=200)
    started_at: datetime = _utc_column(index=True)
    ended_at: datetime | None = _utc_column(default=None)
    acknowledged_at: datetime | None = _utc_column(default=None)
    acknowledged_by: str | None = Field(default=None, max_length=100)


class Programme(SQLModel, table=True):
    """Something to play: uploaded audio, or text (spoken by the offline engine when there is one)."""

    id: str = Field(primary_key=True, max_length=32)
    title: str = Field(max_length=200)
    text: str | None = Field(default=None, max_length=4000)
    language: str = Field(default="zh-CN", max_length=16)
    speed: int | None = Field(default=None, description="speech rate, words a minute (eSpeak NG's -s)")
    media: str | None = Field(default=None, max_length=80, description="file name in the media store")
    media_format: str | None = Field(default=None, max_length=8)
    media_size: int | None = None
    media_sha256: str | None = Field(default=None, max_length=64)
    duration_s: float | None = None
    voice: str | None = Field(default=None, max_length=64, description="the engine and voice that spoke it")
    created_at: datetime = _utc_column(default_factory=now_utc)


class Schedule(SQLModel, table=True):
    """A programme played on a target at the times of a recurrence (RFC 5545), in a time zone."""

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    programme_id: str = Field(foreign_key="programme.id", max_length=32, index=True)
    regions: list[str] = Field(sa_column=Column(JSON, nullable=False))
    groups: list[str] = Field(sa_column=Column(JSON, nullable=False))
    start: datetime = Field(
        sa_column=Column(DateTime(timezone=False), nullable=False),
        description="the first run, wall-clock time in `timezone` (stored naive)",
    )
    rrule: str | None = Field(default=None, max_length=500, description="RFC 5545 RRULE; none: once")
    until: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=False), nullable=True),
        description="no run after this wall-clock time",
    )
    timezone: str = Field(default="Asia/Shanghai", max_length=64)
    expires_in_s: int = Field(description="each run's broadcast expires this long after its time")
    missed: str = Field(default="skip", max_length=8, description="skip, or play if within `grace_s`")
    grace_s: int = 0
    enabled: bool = True
    issuer_region: str | None = Field(
        default=None, max_length=12, description="its runs are issued for this region (default: the county's)"
    )
    created_at: datetime = _utc_column(default_factory=now_utc)
    updated_at: datetime = _utc_column(default_factory=now_utc)


class ScheduleRun(SQLModel, table=True):
    """One occurrence of a schedule, claimed by the controller that plays it (exactly once)."""

    __tablename__ = "schedule_run"

    schedule_id: str = Field(primary_key=True, max_length=32)
    due_at: datetime = _utc_column(primary_key=True)
    started_at: datetime = _utc_column()
    broadcast_id: str | None = Field(default=None, max_length=64)
    outcome: str = Field(max_length=16, description="played, skipped (missed), failed")
    detail: str | None = Field(default=None, max_length=500)


class Account(SQLModel, table=True):
    """A person who signs in. They act within `region` and below, as their `role` allows."""

    id: str = Field(primary_key=True, max_length=32)
    username: str = Field(unique=True, index=True, max_length=64)
    role: str = Field(max_length=16)
    region: str = Field(max_length=12, foreign_key="region.code")
    password_hash: str = Field(max_length=200, description="argon2id, in its PHC string format")
    token_version: int = Field(
        default=0, description="raised when the password, role or region changes: older tokens stop working"
    )
    created_at: datetime = _utc_column(default_factory=now_utc)
    created_by: str | None = Field(default=None, max_length=80)
    disabled_at: datetime | None = _utc_column(default=None)


class ApiKey(SQLModel, table=True):
    """A machine client (an upstream warning system): acts like an account of `role` over `region`."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=16, description="the key's public part")
    name: str = Field(unique=True, max_length=64)
    role: str = Field(max_length=16)
    region: str = Field(max_length=12, foreign_key="region.code")
    secret_sha256: str = Field(max_length=64)
    created_at: datetime = _utc_column(default_factory=now_utc)
    created_by: str | None = Field(default=None, max_length=80)
    revoked_at: datetime | None = _utc_column(default=None)


class RefreshToken(SQLModel, table=True):
    """A refresh token, kept as its hash. Each is used once; tokens descended from one sign-in share
    a `family`, so a token used twice (stolen and replayed) ends the whole family."""

    __tablename__ = "refresh_token"

    id: str = Field(primary_key=True, max_length=64, description="SHA-256 of the token")
    account_id: str = Field(index=True, max_length=32, foreign_key="account.id")
    family: str = Field(index=True, max_length=32)
    issued_at: datetime = _utc_column()
    expires_at: datetime = _utc_column()
    used_at: datetime | None = _utc_column(default=None)
    revoked_at: datetime | None = _utc_column(default=None)


class ServerKey(SQLModel, table=True):
    """Secrets every controller process sharing the database must agree on (the token signing key)."""

    __tablename__ = "server_key"

    name: str = Field(primary_key=True, max_length=32)
    value: str = Field(max_length=200)
    created_at: datetime = _utc_column(default_factory=now_utc)


class TelemetrySample(SQLModel, table=True):
    """A terminal's measurements from one heartbeat, kept at most once per sampling interval
    (`CUNXIANG_TELEMETRY_SAMPLE_S`) for its charts, and for `CUNXIANG_TELEMETRY_KEEP_DAYS`."""

    __tablename__ = "telemetry_sample"
    # A terminal's chart reads one terminal over a span of time.
    __table_args__ = (Index("ix_telemetry_sample_terminal_at", "terminal_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    terminal_id: str = Field(max_length=64)
    at: datetime = _utc_column(index=True, description="when the controller received the heartbeat")
    signal_dbm: int | None = None
    temperature_c: float | None = None
    battery_pct: int | None = None
    supply: str | None = Field(default=None, max_length=16)
    volume: int | None = None


class CapMessage(SQLModel, table=True):
    """A CAP message as it was received (its exact bytes), with what became of it.

    `key` is `sender` and `identifier` (CAP makes an identifier unique per sender) for every message
    that was read; unique, so a message is acted on once however many processes or polls see it.
    A rejected message has no key: sending it again, corrected, is not a duplicate.
    """

    __tablename__ = "cap_message"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = _utc_column(index=True)
    received_by: str = Field(max_length=80, description="the API key, or `feed:<name>` for the poller")
    region: str = Field(max_length=12, description="the region its receiver may address")
    origin: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    """where the poller found it (a file, a feed entry); none for the API"""
    sha256: str = Field(max_length=64, index=True)
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    """the message byte for byte; none when it was over the size limit"""
    size: int
    key: str | None = Field(default=None, sa_column=Column(Text, nullable=True, unique=True))
    sender: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    identifier: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    sent: datetime | None = _utc_column(default=None)
    msg_type: str | None = Field(default=None, max_length=8)
    status: str | None = Field(default=None, max_length=8)
    outcome: str = Field(max_length=16, index=True, description="broadcast update cancel store_only rejected")
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    notes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    broadcasts: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    """the broadcasts it made, or for a cancel, those it cancelled"""
