"""The tamper-evident audit trail: who did what, when, from where.

Records are appended in the caller's transaction and chained by SHA-256 (docs/audit.md defines the
encoding), database triggers refuse to update or delete them, and `verify` walks the chain to name
every edited, removed or forged record. A one-row head table catches the removal of the last records,
which the chain alone cannot show.
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Engine, Text, TypeDecorator, false, func, or_, type_coerce
from sqlalchemy import text as sql
from sqlalchemy.engine import Dialect
from sqlmodel import Field, Session, SQLModel, col, select

from controller.models import _utc_column

GENESIS_HASH = "0" * 64
"""the prev_hash of the first record"""

OUTCOMES = ("ok", "denied", "failed")

_LOCK_KEY = 0x63786175646974
"""PostgreSQL advisory lock serialising appends: "cxaudit" in ASCII"""

_PAGE = 1000
_MAX_PROBLEMS = 100
"""problems listed by `verify`"""


def canonical_json(value: Any) -> str:
    """The one text of a JSON value: sorted keys, no whitespace, non-ASCII as itself, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class CanonicalJSON(TypeDecorator[dict[str, Any]]):
    """A dict stored as its canonical JSON text, so the column holds exactly the hashed bytes
    (an outside verifier never re-serialises) and substring search sees non-ASCII text as written."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: dict[str, Any] | None, dialect: Dialect) -> str | None:
        return None if value is None else canonical_json(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> dict[str, Any] | None:
        return None if value is None else dict(json.loads(value))


class AuditRecord(SQLModel, table=True):
    """One recorded action. Never updated or deleted (triggers refuse it)."""

    __tablename__ = "audit_record"

    seq: int = Field(primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False})
    at: datetime = _utc_column(index=True)
    actor: str = Field(index=True, max_length=100)
    actor_region: str | None = Field(default=None, max_length=12)
    source: str | None = Field(default=None, max_length=64)
    action: str = Field(index=True, max_length=64)
    outcome: str = Field(max_length=16)
    object_type: str | None = Field(default=None, max_length=32)
    object_id: str | None = Field(default=None, index=True, max_length=128)
    region: str | None = Field(default=None, max_length=12)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=CanonicalJSON, nullable=False)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The last record's seq and hash, written with every append: removing the last records shows."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = Field(sa_type=BigInteger)
    hash: str = Field(max_length=64)


@dataclass(frozen=True)
class AuditEntry:
    """What a caller records; `append` adds the seq, time and hashes."""

    actor: str  # account username, "key:<name>" for an API key, "system", "cli"
    action: str  # dotted verb: "auth.login", "broadcast.create", "account.create"...
    outcome: str = "ok"  # one of OUTCOMES
    actor_region: str | None = None  # the actor's home region code
    source: str | None = None  # client IP address, "cli", "scheduler"
    object_type: str | None = None  # "broadcast", "schedule", "terminal", "account"...
    object_id: str | None = None
    region: str | None = None  # the region the action concerned, for region-scoped reading
    detail: dict[str, Any] = field(default_factory=dict)  # what, JSON-serialisable

    def __post_init__(self) -> None:
        if not self.actor or not self.action:
            raise ValueError("an audit entry needs an actor and an action")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        canonical_json(self.detail)  # raises now, in the caller, rather than at flush


@dataclass(frozen=True)
class Verification:
    """The result of walking the chain. `head_seq`/`head_hash` are its last record's (0 and 64 zeros
    when empty): an operator notes them elsewhere to check later with `--expect-head`."""

    ok: bool
    records: int
    head_seq: int
    head_hash: str
    problems: list[str]


def install_guards(engine: Engine) -> None:
    """Make audit records append-only in the database itself (idempotent; run at schema creation)."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Several processes may initialise one database at once; CREATE OR REPLACE races itself.
            connection.execute(sql("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            connection.execute(
                sql(
                    "CREATE OR REPLACE FUNCTION audit_record_append_only() RETURNS trigger"
                    " LANGUAGE plpgsql AS $$ BEGIN"
                    " RAISE EXCEPTION 'audit records are append-only'; END $$"
                )
            )
            connection.execute(
                sql(
                    "CREATE OR REPLACE TRIGGER audit_record_append_only BEFORE UPDATE OR DELETE"
                    " ON audit_record FOR EACH ROW EXECUTE FUNCTION audit_record_append_only()"
                )
            )
            # TRUNCATE skips row triggers.
            connection.execute(
                sql(
                    "CREATE OR REPLACE TRIGGER audit_record_no_truncate BEFORE TRUNCATE"
                    " ON audit_record FOR EACH STATEMENT EXECUTE FUNCTION audit_record_append_only()"
                )
            )
            return
        for event in ("UPDATE", "DELETE"):
            connection.execute(
                sql(
                    f"CREATE TRIGGER IF NOT EXISTS audit_record_no_{event.lower()} BEFORE {event}"
                    " ON audit_record BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END"
                )
            )


def append(session: Session, entry: AuditEntry, at: datetime) -> AuditRecord:
    """Add `entry` as the next record, in the caller's transaction (flushed, not committed).

    On PostgreSQL this holds a lock until the caller commits, serialising every process's appends:
    append late in a transaction and commit soon. It relies on READ COMMITTED (the default), where
    the head read after the lock sees the last committed append.
    """
    if at.tzinfo is None:
        raise ValueError("naive datetime given to the audit trail")
    bind = session.connection()
    if bind.dialect.name == "postgresql":
        bind.execute(sql("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    # No lock on SQLite: each process writes from one thread, and SQLite lets one writer commit at a
    # time; a second process racing on a stale head fails on the seq primary key, never forks the chain.
    head = session.exec(
        select(AuditHead).where(AuditHead.id == 1).execution_options(populate_existing=True)
    ).first()
    if head is None:
        head = AuditHead(id=1, seq=0, hash=GENESIS_HASH)
    record = AuditRecord(
        seq=head.seq + 1,
        at=at.astimezone(UTC),
        actor=entry.actor,
        actor_region=entry.actor_region,
        source=entry.source,
        action=entry.action,
        outcome=entry.outcome,
        object_type=entry.object_type,
        object_id=entry.object_id,
        region=entry.region,
        detail=entry.detail,
        prev_hash=head.hash,
        hash="",
    )
    record.hash = _record_hash(_fields(record, canonical_json(entry.detail)))
    head.seq, head.hash = record.seq, record.hash
    session.add(record)
    session.add(head)
    session.flush()
    return record


def _fields(record: AuditRecord, detail: str) -> list[str | None]:
    """The hashed fields in their order (docs/audit.md), as text."""
    return [
        str(record.seq),
        record.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        record.actor,
        record.actor_region,
        record.source,
        record.action,
        record.outcome,
        record.object_type,
        record.object_id,
        record.region,
        detail,
        record.prev_hash,
    ]


def _record_hash(fields: list[str | None]) -> str:
    digest = hashlib.sha256()
    for value in fields:
        if value is None:
            digest.update(b"-\n")
        else:
            data = value.encode()
            digest.update(b"%d:%b\n" % (len(data), data))
    return digest.hexdigest()


def verify(session: Session, *, expect_head: tuple[int, str] | None = None) -> Verification:
    """Walk the chain up to the head as it stands now, naming each edited, missing or forged record.

    Records appended meanwhile lie beyond that head and are checked next time. `expect_head`, a
    (seq, hash) noted earlier, must still be in the chain: that catches a chain rewritten wholesale.
    """
    problems = _Problems()
    head = session.get(AuditHead, 1, populate_existing=True)
    limit = head.seq if head is not None else None
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    noted: str | None = None
    for record, detail in _walk(session, limit):
        count += 1
        if record.seq > expected_seq:
            problems.append(_gap(expected_seq, record.seq))
        elif record.seq < expected_seq:
            problems.append(f"record {record.seq} is out of place (expected {expected_seq} or later)")
        elif record.prev_hash != prev_hash:
            problems.append(
                "record 1 does not start the chain (prev_hash is not 64 zeros)"
                if record.seq == 1
                else f"record {record.seq} does not chain to record {record.seq - 1} (prev_hash mismatch)"
            )
        if _record_hash(_fields(record, detail)) != record.hash:
            problems.append(f"record {record.seq} was edited (hash mismatch)")
        if expect_head is not None and record.seq == expect_head[0]:
            noted = record.hash
        expected_seq, prev_hash = max(expected_seq, record.seq + 1), record.hash
    last_seq = expected_seq - 1
    if head is None:
        if count:
            problems.append(f"the head row is missing (the chain runs to {last_seq})")
    else:
        for problem in _head_problems(session, head, last_seq, prev_hash):
            problems.append(problem)
    if expect_head is not None and noted != expect_head[1]:
        seq, hash_ = expect_head
        problems.append(
            f"the noted head {seq} is not in the chain (it ends at {last_seq})"
            if seq > last_seq
            else f"record {seq} no longer has the noted hash {hash_} (the chain was rewritten)"
        )
    listed = problems.listed()
    return Verification(not listed, count, last_seq, prev_hash, listed)


class _Problems:
    """The first problems found, and how many more: a rewritten chain has one per record."""

    def __init__(self) -> None:
        self._listed: list[str] = []
        self._unlisted = 0

    def append(self, problem: str) -> None:
        if len(self._listed) < _MAX_PROBLEMS:
            self._listed.append(problem)
        else:
            self._unlisted += 1

    def listed(self) -> list[str]:
        more = [f"... and {self._unlisted} more problems"] if self._unlisted else []
        return self._listed + more


def _walk(session: Session, limit: int | None) -> Iterator[tuple[AuditRecord, str]]:
    """Every record up to `limit` in seq order with its stored detail text, a page at a time."""
    after = 0
    detail_text = type_coerce(col(AuditRecord.detail), Text).label("detail_text")
    while True:
        query = select(AuditRecord, detail_text).where(AuditRecord.seq > after)
        if limit is not None:
            query = query.where(AuditRecord.seq <= limit)
        page = session.exec(query.order_by(col(AuditRecord.seq)).limit(_PAGE)).all()
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1][0].seq


def _gap(expected: int, found: int) -> str:
    missing = f"record {expected} is" if found == expected + 1 else f"records {expected}-{found - 1} are"
    if expected == 1:
        return f"{missing} missing (the chain starts at {found})"
    return f"{missing} missing (chain broken between {expected - 1} and {found})"


def _head_problems(session: Session, head: AuditHead, last_seq: int, last_hash: str) -> list[str]:
    if last_seq < head.seq:
        removed = head.seq - last_seq
        what = "the last record was" if removed == 1 else f"the last {removed} records were"
        return [f"{what} removed (head says {head.seq})"]
    if head.hash != last_hash:
        return [f"record {last_seq} does not match the head's hash (it was replaced)"]
    # Read the newest record before the head again: an append commits both at once, so a record
    # beyond the newer head was put there by hand.
    newest = session.exec(select(func.max(AuditRecord.seq))).one() or 0
    current = session.get(AuditHead, 1, populate_existing=True)
    current_seq = current.seq if current is not None else 0
    if newest > current_seq:
        what = (
            f"record {newest} lies"
            if newest == current_seq + 1
            else f"records {current_seq + 1}-{newest} lie"
        )
        return [f"{what} beyond the head (head says {current_seq})"]
    return []


def search(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    object_id: str | None = None,
    regions: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    text: str | None = None,
    before_seq: int | None = None,
    limit: int = 100,
) -> list[AuditRecord]:
    """Records matching every filter given, newest first.

    `action` matches as a prefix ("broadcast."); `regions` keeps records whose region starts with one
    of the codes (an empty list keeps none, None keeps all); `since` is inclusive, `until` exclusive;
    `text` is a case-insensitive substring of the detail, object id or actor; page on with
    `before_seq` set to the last seq returned.
    """
    query = select(AuditRecord)
    if actor is not None:
        query = query.where(AuditRecord.actor == actor)
    if action is not None:
        query = query.where(col(AuditRecord.action).startswith(action, autoescape=True))
    if object_id is not None:
        query = query.where(AuditRecord.object_id == object_id)
    if regions is not None:
        query = query.where(
            or_(false(), *(col(AuditRecord.region).startswith(code, autoescape=True) for code in regions))
        )
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    if until is not None:
        query = query.where(AuditRecord.at < until)
    if text is not None:
        query = query.where(
            or_(
                type_coerce(col(AuditRecord.detail), Text).icontains(text, autoescape=True),
                col(AuditRecord.object_id).icontains(text, autoescape=True),
                col(AuditRecord.actor).icontains(text, autoescape=True),
            )
        )
    if before_seq is not None:
        query = query.where(AuditRecord.seq < before_seq)
    return list(session.exec(query.order_by(col(AuditRecord.seq).desc()).limit(limit)).all())


def failures_since(
    session: Session, *, action: str, actor: str | None = None, source: str | None = None, since: datetime
) -> int:
    """Records of `action` denied since `since`, for that actor and/or source: the shared count that
    rate-limits login attempts across processes."""
    query = (
        select(func.count())
        .select_from(AuditRecord)
        .where(AuditRecord.action == action, AuditRecord.outcome == "denied", AuditRecord.at >= since)
    )
    if actor is not None:
        query = query.where(AuditRecord.actor == actor)
    if source is not None:
        query = query.where(AuditRecord.source == source)
    return session.exec(query).one()


def commit_entry(session: Session, entry: AuditEntry, at: datetime) -> None:
    """Append `entry` and commit: for an action whose own writes were committed already."""
    append(session, entry, at)
    session.commit()
