"""CAP messages in: each stored as received, with what became of it, and acted on through the
controller like an operator's request.

One entry point, `CapIntake.receive`, for `POST /api/v1/cap` and the feed poller:

1. A message seen before (the same bytes) is answered from its record, and nothing is done again.
2. It is parsed and mapped (`controller.cap.mapping`) within its receiver's region: the receiver (an
   API key, or a feed) may address only that region, so areas beyond it are clipped off, as a
   province's alert is clipped to the county.
3. The decision is carried out: a broadcast or an update goes through `Controller.submit`, with the
   receiver as its sender (the same rate limit, and the two-person rule for a live level I/II
   alert), and the message's record is written in the broadcast's own transaction, so the two exist
   together or not at all; a cancel cancels the newest broadcast of each message it names.
4. Every message gets a record (`CapMessage`) and an audit entry, whatever its outcome.

`key` (sender and identifier) is unique among messages that were read, so two controller
processes, or two polls, receiving one message act on it once: the second finds it stored.
"""

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controller.accounts import Principal
from controller.audit import append
from controller.broadcasts import (
    BroadcastConflict,
    BroadcastNotFound,
    BroadcastRejected,
    created_since,
    head_of,
)
from controller.cap.fetch import FetchFailed, fetch_limited, new_client
from controller.cap.geometry import TerminalPosition
from controller.cap.mapping import (
    CapAudio,
    CapBroadcast,
    CapCancel,
    CapDecision,
    CapRejection,
    CapStoreOnly,
    CapUpdate,
    decide,
    read_cap,
)
from controller.cap.model import CapAlert, CapReference
from controller.media import MediaRejected, inspect_audio
from controller.models import SENDING_STATES, Broadcast, BroadcastState, CapMessage, Terminal
from devices.messages import AudioRef, now_utc

if TYPE_CHECKING:
    from controller.service import Controller

log = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = Literal["broadcast", "update", "cancel", "store_only", "rejected"]
Refusal = Literal["rate", "conflict", "too_large"]


class CapReceipt(BaseModel):
    """What became of one CAP message."""

    model_config = ConfigDict(frozen=True)

    message_id: int
    """its record: GET /api/v1/cap/messages/{message_id}"""
    outcome: Outcome
    reason: str | None
    """why it was rejected or only stored"""
    notes: list[str]
    """what was left out or adjusted, and why"""
    broadcasts: list[str]
    """the broadcast it made (or, for a cancel, those it cancelled)"""
    state: str | None
    """the state of the broadcast it made: accepted, active, awaiting_approval…"""
    sender: str | None
    identifier: str | None
    sent: datetime | None
    duplicate: bool = False
    """the same message was received before; this is what became of it then"""
    refusal: Refusal | None = None
    """a rejection the API answers other than 422: the sender's rate (429), an identifier reused
    for a different message (409), a message over the size limit (413)"""


@dataclass(frozen=True)
class _Record:
    """The parts of a message's record known once it is read and decided."""

    outcome: Outcome
    reason: str | None = None
    notes: tuple[str, ...] = ()
    broadcasts: tuple[str, ...] = ()
    refusal: Refusal | None = None


class CapIntake:
    """Receives CAP messages for one controller."""

    def __init__(self, controller: "Controller") -> None:
        self.controller = controller
        self.settings = controller.settings

    async def receive(
        self, data: bytes, by: Principal, *, origin: str | None = None, again: bool = True
    ) -> CapReceipt:
        """Store and act on one message (see the module's docstring); never raises for bad input.

        `again`: whether a message rejected before is tried afresh (the API: its sender may resend
        it once the alert it updates has arrived) or answered from its record (a feed, read again
        and again, would otherwise add a rejection at every poll).
        Raises NotAccepting while the controller stops: nothing is stored, so it can be sent again.
        """
        receipt = await self._receive(data, by, origin, again)
        self.controller.metrics.cap_messages.labels(
            "duplicate" if receipt.duplicate else receipt.outcome
        ).inc()
        return receipt

    async def seen(self, digests: list[str]) -> set[str]:
        """Which of these SHA-256 digests are of messages received before, whatever their outcome."""
        if not digests:
            return set()
        query = select(CapMessage.sha256).where(col(CapMessage.sha256).in_(digests))
        return set(await self._read(lambda s: s.exec(query).all()))

    async def refuse(self, by: Principal, origin: str, reason: str) -> CapReceipt:
        """Record a message that could not be had at all (a feed entry that failed to download)."""
        receipt = await self._store(b"", by, origin, None, _Record("rejected", reason))
        self.controller.metrics.cap_messages.labels("rejected").inc()
        return receipt

    async def _receive(self, data: bytes, by: Principal, origin: str | None, again: bool) -> CapReceipt:
        sha256 = hashlib.sha256(data).hexdigest()
        earlier = await self._read(lambda s: _earlier(s, sha256, include_rejected=not again))
        if earlier is not None:
            return earlier
        alert = await asyncio.to_thread(read_cap, data, self.settings.cap_max_bytes)
        if isinstance(alert, CapRejection):
            refusal: Refusal | None = "too_large" if len(data) > self.settings.cap_max_bytes else None
            record = _Record("rejected", alert.reason, refusal=refusal)
            return await self._store(data, by, origin, None, record)
        stored = await self._read(lambda s: _by_key(s, _key(alert)))
        if stored is not None:
            if stored.sha256 == sha256:
                return await self._read(lambda s: _receipt(s, stored, duplicate=True))
            reason = (
                f"{alert.sender} already sent a different message with identifier {alert.identifier} "
                f"(received {stored.received_at.isoformat()}, record {stored.id}); CAP identifiers are "
                "unique per sender: give the new message its own identifier"
            )
            return await self._store(data, by, origin, alert, _Record("rejected", reason, refusal="conflict"))
        decision = await self._read(lambda s: self._decide(s, alert, by))
        try:
            return await self._carry_out(data, by, origin, alert, decision)
        except IntegrityError:
            # Another process (or poll) stored this sender's identifier meanwhile: its record stands.
            found = await self._read(lambda s: _by_key(s, _key(alert)))
            if found is None:
                raise
            return await self._read(lambda s: _receipt(s, found, duplicate=True))

    def _decide(self, session: Session, alert: CapAlert, by: Principal) -> CapDecision:
        rules = self.settings.cap_rules
        if by.region != rules.county_region and by.region.startswith(rules.county_region):
            rules = rules.model_copy(update={"county_region": by.region})
        return decide(
            alert,
            rules=rules,
            terminals=_positions(session, by.region),
            known=_known(session, alert.references),
            now=now_utc(),
        )

    async def _carry_out(
        self, data: bytes, by: Principal, origin: str | None, alert: CapAlert, decision: CapDecision
    ) -> CapReceipt:
        if isinstance(decision, CapRejection):
            return await self._store(data, by, origin, alert, _Record("rejected", decision.reason))
        if isinstance(decision, CapStoreOnly):
            return await self._store(data, by, origin, alert, _Record("store_only", decision.reason))
        if isinstance(decision, CapCancel):
            return await self._cancel(data, by, origin, alert, decision)
        return await self._broadcast(data, by, origin, alert, decision)

    async def _broadcast(
        self, data: bytes, by: Principal, origin: str | None, alert: CapAlert, decision: CapBroadcast
    ) -> CapReceipt:
        notes = list(decision.notes)
        since = now_utc() - timedelta(minutes=1)
        recent = await self._read(lambda s: created_since(s, by.name, since))
        limit = self.settings.broadcasts_per_minute
        if recent >= limit:
            reason = f"{by.name} made {recent} broadcasts in the last minute (the limit is {limit})"
            return await self._store(data, by, origin, alert, _Record("rejected", reason, refusal="rate"))
        # Issued for the receiver's region, as an operator's request is: it ranks among equals by it.
        request = decision.request.model_copy(update={"issuer_region": by.region})
        if decision.audio is not None:
            audio, problem = await self._audio(decision.audio)
            if audio is not None:
                request = request.model_copy(update={"audio": audio})
            else:
                notes.append(f"its audio was left out, the text is spoken instead: {problem}")
        updates: str | None = None
        outcome: Outcome = "broadcast"
        if isinstance(decision, CapUpdate):
            heads = await self._read(lambda s: _heads(s, decision.replaces))
            going = [h for h in heads if h.state not in (BroadcastState.CANCELLING, BroadcastState.CANCELLED)]
            if heads and not going:
                reason = f"broadcast {heads[0].id}, which it updates, was cancelled here: not sent again"
                return await self._store(data, by, origin, alert, _Record("store_only", reason))
            held = [h for h in going if h.state == BroadcastState.AWAITING_APPROVAL]
            for head in held:
                # Nobody approved the old version yet: the newer one waits in its place.
                await self.controller.cancel(head.id, by=by)
                notes.append(f"broadcast {head.id}, awaiting approval, was withdrawn: this one replaces it")
            sent = [h for h in going if h not in held]
            if sent:
                updates, outcome = sent[0].id, "update"
                notes.extend(f"it also updates {h.id}, which goes on: cancel it if need be" for h in sent[1:])
            elif not held:
                notes.append("the messages it updates were not broadcast here: it is broadcast as new")
        key = _key(alert)

        def claim(session: Session, broadcast_id: str) -> None:
            record = _Record(outcome, notes=tuple(notes), broadcasts=(broadcast_id,))
            _add(session, data, by, origin, alert, record, key, self.settings.cap_max_bytes)

        try:
            broadcast = await self.controller.submit(
                request, updates=updates, not_before=decision.not_before, claim=claim, by=by
            )
        except (BroadcastRejected, BroadcastConflict, BroadcastNotFound) as exc:
            return await self._store(data, by, origin, alert, _Record("rejected", str(exc), tuple(notes)))
        log.info("CAP %s from %s became broadcast %s (%s)", alert.identifier, by.name, broadcast.id, outcome)
        return await self._read(lambda s: _receipt(s, _by_key(s, key)))

    async def _cancel(
        self, data: bytes, by: Principal, origin: str | None, alert: CapAlert, decision: CapCancel
    ) -> CapReceipt:
        heads = await self._read(lambda s: _heads(s, decision.cancels))
        cancelled: list[str] = []
        notes: list[str] = []
        for head in heads:
            if head.state not in (*SENDING_STATES, BroadcastState.AWAITING_APPROVAL):
                notes.append(f"broadcast {head.id} is already {head.state}: nothing to cancel")
                continue
            try:
                await self.controller.cancel(head.id, by=by)
            except BroadcastConflict as exc:
                notes.append(str(exc))
                continue
            cancelled.append(head.id)
        if not heads:
            reason = "the messages it cancels were not broadcast here: nothing to cancel"
            return await self._store(data, by, origin, alert, _Record("store_only", reason))
        record = _Record("cancel", decision.reason, tuple(notes), tuple(cancelled))
        return await self._store(data, by, origin, alert, record)

    async def _audio(self, audio: CapAudio) -> tuple[AudioRef | None, str]:
        """The alert's audio checked, stored and addressed for terminals, or why it cannot be."""
        limit = self.settings.max_upload_bytes
        data = audio.content
        if data is None:
            assert audio.uri is not None
            try:
                async with new_client(self.settings.cap_fetch_timeout_s) as client:
                    data, _answered_at = await fetch_limited(client, audio.uri, limit, "audio/*")
            except FetchFailed as exc:
                return None, exc.reason
        try:
            info = await asyncio.to_thread(inspect_audio, data, limit)
        except MediaRejected as exc:
            return None, str(exc)
        await asyncio.to_thread(self.controller.media.put, data, info)
        url = f"{self.settings.media_url}/{info.name}"
        return AudioRef(url=url, size=info.size, sha256=info.sha256, duration_s=info.duration_s), ""

    async def _store(
        self, data: bytes, by: Principal, origin: str | None, alert: CapAlert | None, record: _Record
    ) -> CapReceipt:
        key = _key(alert) if alert is not None and record.outcome != "rejected" else None

        def store(session: Session) -> CapReceipt:
            message = _add(session, data, by, origin, alert, record, key, self.settings.cap_max_bytes)
            session.commit()
            return _receipt(session, message, refusal=record.refusal)

        receipt = await self.controller.writer.call(store)
        if record.outcome == "rejected":
            log.info("CAP message %d from %s rejected: %s", receipt.message_id, by.name, record.reason)
        return receipt

    async def _read(self, work: Callable[[Session], T]) -> T:
        def run() -> T:
            with Session(self.controller.engine) as session:
                return work(session)

        return await asyncio.to_thread(run)


def _add(
    session: Session,
    data: bytes,
    by: Principal,
    origin: str | None,
    alert: CapAlert | None,
    record: _Record,
    key: str | None,
    max_bytes: int,
) -> CapMessage:
    """Add a message's record and its audit entry to the session (the caller commits). Bytes over
    the size limit are not kept (the message was refused unread), so huge bodies cannot fill the
    database."""
    now = now_utc()
    message = CapMessage(
        received_at=now,
        received_by=by.name,
        region=by.region,
        origin=origin,
        sha256=hashlib.sha256(data).hexdigest(),
        raw=data if data and len(data) <= max_bytes else None,
        size=len(data),
        key=key,
        sender=alert.sender if alert else None,
        identifier=alert.identifier if alert else None,
        sent=alert.sent if alert else None,
        msg_type=alert.msg_type.value if alert else None,
        status=alert.status.value if alert else None,
        outcome=record.outcome,
        reason=record.reason,
        notes=list(record.notes),
        broadcasts=list(record.broadcasts),
    )
    session.add(message)
    session.flush()
    entry = by.audit(
        "cap.receive",
        "cap_message",
        str(message.id),
        by.region,
        outcome="failed" if record.outcome == "rejected" else "ok",
        sender=message.sender,
        identifier=message.identifier,
        msg_type=message.msg_type,
        status=message.status,
        decision=record.outcome,
        reason=record.reason,
        broadcasts=list(record.broadcasts),
        origin=origin,
        sha256=message.sha256,
    )
    append(session, entry, now)
    return message


def _key(message: CapAlert | CapReference) -> str:
    # Neither part may contain a space (CAP's rules, checked when it is read): a space separates them.
    return f"{message.sender} {message.identifier}"


def _earlier(session: Session, sha256: str, include_rejected: bool) -> CapReceipt | None:
    """What became of the same bytes when they were first received, if they were."""
    query = select(CapMessage).where(CapMessage.sha256 == sha256)
    if not include_rejected:
        query = query.where(CapMessage.outcome != "rejected")
    found = session.exec(query.order_by(col(CapMessage.id)).limit(1)).first()
    return _receipt(session, found, duplicate=True) if found is not None else None


def _by_key(session: Session, key: str) -> CapMessage | None:
    return session.exec(select(CapMessage).where(CapMessage.key == key)).first()


def _referenced(session: Session, references: Iterable[CapReference]) -> list[CapMessage]:
    """The stored messages the references name, by sender and identifier."""
    keys = [_key(r) for r in references]
    if not keys:
        return []
    return list(session.exec(select(CapMessage).where(col(CapMessage.key).in_(keys))).all())


def _known(session: Session, references: Iterable[CapReference]) -> list[CapReference]:
    """The stored messages the references name, as references."""
    return [
        CapReference(sender=row.sender, identifier=row.identifier, sent=row.sent)
        for row in _referenced(session, references)
        if row.sender is not None and row.identifier is not None and row.sent is not None
    ]


def _heads(session: Session, references: Iterable[CapReference]) -> list[Broadcast]:
    """The newest broadcast of each lineage the referenced messages began or continued, newest first."""
    heads: dict[str, Broadcast] = {}
    for row in _referenced(session, references):
        for broadcast_id in row.broadcasts:
            head = head_of(session, broadcast_id)
            if head is not None:
                heads[head.id] = head
    return sorted(heads.values(), key=lambda b: b.issued_at, reverse=True)


def _positions(session: Session, region: str) -> list[TerminalPosition]:
    """Where the terminals in service within `region` stand, for CAP's polygons and circles."""
    rows = session.exec(
        select(Terminal.id, Terminal.latitude, Terminal.longitude).where(
            col(Terminal.region_code).startswith(region),
            col(Terminal.decommissioned_at).is_(None),
            col(Terminal.latitude).is_not(None),
            col(Terminal.longitude).is_not(None),
        )
    ).all()
    return [TerminalPosition(t, lat, lon) for t, lat, lon in rows if lat is not None and lon is not None]


def _receipt(
    session: Session,
    message: CapMessage | None,
    *,
    duplicate: bool = False,
    refusal: Refusal | None = None,
) -> CapReceipt:
    """A message's record as the receipt, with the current state of the broadcast it made."""
    assert message is not None and message.id is not None
    made = session.get(Broadcast, message.broadcasts[0]) if message.broadcasts else None
    return CapReceipt(
        message_id=message.id,
        outcome=message.outcome,
        reason=message.reason,
        notes=message.notes,
        broadcasts=message.broadcasts,
        state=made.state if made is not None else None,
        sender=message.sender,
        identifier=message.identifier,
        sent=message.sent,
        duplicate=duplicate,
        refusal=refusal,
    )
