"""Delivery tracking in memory, written to the database in batches.

The tracker holds the delivery state of every terminal of every live broadcast. Each
acknowledgement is checked against the state machine (`controller.delivery`) in memory and, if it
moves a delivery forward, recorded with the `DbWriter` for the next batch. When every delivery of a
broadcast is final, or its expiry passes, the broadcast is over and leaves memory.
"""

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller.delivery import (
    FINAL_STATES,
    STATE_FOR_STAGE,
    UNACKNOWLEDGED_STATES,
    UNCONFIRMED,
    DeliveryState,
    can_move,
)
from controller.metrics import Metrics
from controller.models import Broadcast, BroadcastState, Delivery
from controller.writer import DbWriter
from devices.backoff import backoff_delay
from devices.messages import Ack, AckReason, AckStage

log = logging.getLogger(__name__)

# What the controller handles on a small machine (docs/performance.md: about 5,000-7,000 a second).
EXPECTED_ACKS_PER_S = 5000

_TIMESTAMP_COLUMN = {
    DeliveryState.SENT: "sent_at",
    DeliveryState.RECEIVED: "received_at",
    DeliveryState.PLAYING: "playing_at",
}


UNTRUSTED = frozenset(
    {AckReason.UNSIGNED, AckReason.UNKNOWN_KEY, AckReason.BAD_SIGNATURE, AckReason.KEY_NOT_VALID}
)
"""a terminal's reasons for refusing a command it could not verify"""


@dataclass
class LiveBroadcast:
    """What the tracker keeps of a broadcast until it is over."""

    id: str
    issued_at: datetime
    expires_at: datetime
    priority: int
    regions: list[str]
    payload: bytes
    states: dict[str, DeliveryState]
    state: BroadcastState = BroadcastState.ACCEPTED
    terminals: list[str] = field(default_factory=list)
    """terminals addressed one by one at the first publish (outside `regions`)"""
    resumable: bool = False
    """a programme: a terminal resumes it after a pre-emption, so `preempted` is not final before expiry"""
    not_before: datetime | None = None
    """staged ahead of its time (a scheduled run): published then, not before"""
    supersedes: list[str] = field(default_factory=list)
    """the earlier broadcasts its command ends on every terminal that takes it"""
    open: int = field(init=False)
    retries: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    """terminal → (sends so far, when to send again if it has not acknowledged `received` by then)"""
    cancel_published: bool = False
    owed_cancel: set[str] = field(default_factory=set)
    """terminals marked cancelled before they answered: they may still hold the command (a broker
    queue, a late retry), so they are sent the cancel until they confirm or the broadcast expires"""

    @property
    def over(self) -> bool:
        return self.open == 0 and not self.owed_cancel

    def final(self, state: DeliveryState | None) -> bool:
        """Whether a terminal in `state` is done with this broadcast."""
        if state is DeliveryState.PREEMPTED:
            return not self.resumable
        return state in FINAL_STATES

    def awaits(self, terminal_id: str) -> bool:
        """Whether an answer from this terminal is still awaited (and it is retried until then):
        `received` for a command, or the end of it for a cancel. Nothing is sent for a broadcast an
        update replaced: the update's own sends end it on each terminal."""
        state = self.states.get(terminal_id)
        if self.state is BroadcastState.SUPERSEDED:
            return False
        if self.state is BroadcastState.CANCELLING:
            return terminal_id in self.owed_cancel or not self.final(state)
        return state in UNACKNOWLEDGED_STATES

    def owes(self, terminal_id: str) -> bool:
        """Whether to send it again to this terminal (its birth, a reconnect): it has not finished
        it, or is owed the cancel. Never a broadcast an update replaced (the update ends it), nor
        one staged for later that has not gone out yet (the scheduler sends it at its time)."""
        if self.state is BroadcastState.SUPERSEDED or terminal_id not in self.states:
            return False
        if self.state is BroadcastState.ACCEPTED and self.not_before is not None:
            return False
        return not self.final(self.states[terminal_id]) or terminal_id in self.owed_cancel

    def recount(self) -> None:
        self.open = sum(1 for state in self.states.values() if not self.final(state))

    def __post_init__(self) -> None:
        self.recount()


class AckOutcome:
    """Why an acknowledgement changed nothing (metric label), or None when it was applied."""

    UNKNOWN_COMMAND = "unknown_command"
    LATE = "ack_for_finished_broadcast"
    NOT_TARGETED = "terminal_not_targeted"
    ABSURD_TIME = "absurd_timestamp"


class Ignored:
    """Why an acknowledgement of a tracked delivery did not move it (metric label)."""

    DUPLICATE = "duplicate"
    BACKWARDS = "backwards"
    AFTER_FINAL = "after_final"


class DeliveryTracker:
    """Live delivery states, the single place where they change."""

    def __init__(
        self,
        writer: DbWriter,
        metrics: Metrics,
        *,
        playback_grace: timedelta,
        retry_after: float = 3.0,
        retry_max_interval: float = 60.0,
        clock_tolerance: timedelta = timedelta(hours=1),
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._grace = playback_grace
        self._clock_tolerance = clock_tolerance
        self._retry_after = retry_after
        self._retry_max = retry_max_interval
        self._live: dict[str, LiveBroadcast] = {}
        self._recently_over: OrderedDict[str, None] = OrderedDict()
        self._deliveries = Delivery.__table__  # type: ignore[attr-defined]
        # Looked up once: a label lookup per acknowledgement is a measurable share of handling it.
        self._transitions = {
            state: metrics.delivery_transitions.labels(state.value) for state in DeliveryState
        }
        self._broadcasts = Broadcast.__table__  # type: ignore[attr-defined]

    def track(self, broadcast: LiveBroadcast, at: datetime) -> None:
        self._live[broadcast.id] = broadcast
        if broadcast.over:
            self._finish(broadcast, at)

    def live(self) -> list[LiveBroadcast]:
        return list(self._live.values())

    def find(self, broadcast_id: str) -> LiveBroadcast | None:
        return self._live.get(broadcast_id)

    def unfinished(self, now: datetime) -> list[tuple[LiveBroadcast, list[str]]]:
        """Unexpired live broadcasts with the terminals to send them to again, lowest priority
        first (see `unfinished_for`)."""
        return [(live, [t for t in live.states if live.owes(t)]) for live in self._by_priority(now)]

    def unfinished_for(self, terminal_id: str, now: datetime) -> list[LiveBroadcast]:
        """Unexpired live broadcasts this terminal should be sent again, lowest priority first: a
        programme that arrives before the alert that had pre-empted it is put aside again and
        resumes after it; the other way round it would be refused as busy."""
        return [live for live in self._by_priority(now) if live.owes(terminal_id)]

    def unexpired(self, now: datetime) -> list[LiveBroadcast]:
        """Unexpired live broadcasts, lowest priority first (without going through their terminals,
        which `unfinished` does for every one: once a second, for a county, that adds up)."""
        return self._by_priority(now)

    def _by_priority(self, now: datetime) -> list[LiveBroadcast]:
        unexpired = [live for live in self._live.values() if now < live.expires_at]
        return sorted(unexpired, key=lambda live: live.priority)

    def mark_sent(self, live: LiveBroadcast, terminal_ids: list[str] | None, at: datetime) -> None:
        """The broker took the command for these terminals (None: the region publish, for everyone).

        Only the region publish makes a broadcast `active`, so after a restart an `accepted` one is
        known never to have gone out to its regions.
        """
        if self._live.get(live.id) is not live:
            return
        if terminal_ids is None and live.state is BroadcastState.ACCEPTED:
            live.state = BroadcastState.ACTIVE
            self._writer.update(self._broadcasts, (live.id,), {"state": live.state.value})
        targets = terminal_ids if terminal_ids is not None else list(live.states)
        states = live.states
        pending = [t for t in targets if states.get(t) is DeliveryState.PENDING]
        if terminal_ids is None and live.state is BroadcastState.ACTIVE:
            # What `_move` does for pending → sent of an active broadcast (still awaited, not
            # final, nothing to clear), once for all: a county's region publish moves thousands
            # at once, and the acknowledgements wait behind it. In the database, one UPDATE of
            # the broadcast's rows still `pending` (the rows pending here are pending there: the
            # database is never ahead of memory); a row that moved on here in the meantime gets
            # the publish's `sent_at` too, then its own later state.
            for terminal_id in pending:
                states[terminal_id] = DeliveryState.SENT
            if pending:
                values = {"state": DeliveryState.SENT.value, "updated_at": at, "sent_at": at}
                where = {"broadcast_id": live.id, "state": DeliveryState.PENDING.value}
                self._writer.update_where(self._deliveries, where, values, count=len(pending))
                self._transitions[DeliveryState.SENT].inc(len(pending))
        else:
            for terminal_id in pending:
                self._move(live, terminal_id, DeliveryState.SENT, at)
        self.schedule_retries(live, targets, at)

    def schedule_retries(self, live: LiveBroadcast, terminal_ids: list[str], at: datetime) -> None:
        """After a send (or a failed attempt): when to try each terminal again if it stays silent."""
        # A big broadcast's acknowledgements take a while to get through the broker and this
        # process: retrying before they could have would only add to the queue they wait in.
        first = self._retry_after + len(live.states) / EXPECTED_ACKS_PER_S
        retries, awaits = live.retries, live.awaits
        for terminal_id in terminal_ids:
            if awaits(terminal_id):
                sends = retries[terminal_id][0] + 1 if terminal_id in retries else 1
                delay = backoff_delay(sends, first, self._retry_max)
                retries[terminal_id] = (sends, at + timedelta(seconds=delay))

    def cancel(self, live: LiveBroadcast, payload: bytes, cancel_id: str, at: datetime) -> None:
        """From now on send `payload` (the cancel) instead of the command; whoever has not
        acknowledged it yet will never play it. Terminals that did are cancelled by their ack."""
        live.payload, live.state = payload, BroadcastState.CANCELLING
        live.retries.clear()
        self._writer.update(self._broadcasts, (live.id,), {"state": live.state.value})
        for terminal_id, state in list(live.states.items()):
            if state in UNACKNOWLEDGED_STATES:
                live.owed_cancel.add(terminal_id)
                self._move(live, terminal_id, DeliveryState.CANCELLED, at, reason=UNCONFIRMED, by=cancel_id)

    def supersede(self, live: LiveBroadcast, at: datetime) -> None:
        """An update replaced it: stop sending it; its terminals report how it ended as the update
        reaches them (`cancelled` by the update, or its final ack), the rest expire with it."""
        live.state = BroadcastState.SUPERSEDED
        live.retries.clear()
        self._writer.update(self._broadcasts, (live.id,), {"state": live.state.value})
        if live.over:
            self._finish(live, at)

    def due_retries(self, now: datetime) -> list[tuple[LiveBroadcast, list[str]]]:
        """Terminals whose `received` is overdue, per unexpired broadcast (the caller sends again)."""
        due = []
        for live in self._live.values():
            if now >= live.expires_at:
                continue
            terminals = [t for t, (_sends, at) in live.retries.items() if at <= now]
            if terminals:
                due.append((live, terminals))
        return due

    def on_ack(self, ack: Ack, at: datetime) -> str | None:
        """Apply one acknowledgement; returns a rejection label if it named nothing we track."""
        live = self._live.get(ack.command_id)
        if live is None:
            return AckOutcome.LATE if ack.command_id in self._recently_over else AckOutcome.UNKNOWN_COMMAND
        # A terminal repeats its stored ack (with its old time) when sent a command again, possibly
        # long after: only a time before the command existed, or in the future, is absurd.
        if ack.at > at + self._clock_tolerance or ack.at < live.issued_at - self._clock_tolerance:
            return AckOutcome.ABSURD_TIME
        current = live.states.get(ack.terminal_id)
        if current is None:
            return AckOutcome.NOT_TARGETED
        if ack.stage is AckStage.REJECTED and ack.reason in UNTRUSTED:
            # Not the end of the delivery: what the terminal refused may have been a forgery using
            # this command's id, and the genuine command (sent again) may still reach it.
            self._metrics.commands_refused.labels(ack.reason.value).inc()
            return None
        new = STATE_FOR_STAGE[ack.stage]
        if ack.terminal_id in live.owed_cancel and live.final(new):
            self._confirm_cancel(live, ack, new, at)
        elif can_move(current, new, resumable=live.resumable):
            self._move(live, ack.terminal_id, new, at, reason=ack.reason, detail=ack.detail, by=ack.by)
        else:
            self._metrics.delivery_ignored.labels(_why_ignored(current, new)).inc()
        if live.supersedes and (ack.stage is not AckStage.REJECTED or ack.reason is AckReason.BUSY):
            self._ended_by_update(live, ack.terminal_id, at)
        return None

    def _ended_by_update(self, update: LiveBroadcast, terminal_id: str, at: datetime) -> None:
        """The terminal took the update, so it ended what the update supersedes, even if its
        `cancelled` ack for those was lost (it is not sent again: they are never resent)."""
        for earlier_id in update.supersedes:
            earlier = self._live.get(earlier_id)
            if earlier is None or earlier.state is not BroadcastState.SUPERSEDED:
                continue
            state = earlier.states.get(terminal_id)
            if state is not None and not earlier.final(state):
                self._move(earlier, terminal_id, DeliveryState.CANCELLED, at, by=update.id)

    def sweep(self, now: datetime) -> None:
        """Expire what its broadcast's expiry (and, for playing terminals, the grace) has passed."""
        for live in list(self._live.values()):
            if now < live.expires_at:
                continue
            if live.owed_cancel or live.resumable:
                # An expired command is never started or resumed: nobody needs the cancel any
                # more, and a programme pre-empted until now ends pre-empted.
                live.owed_cancel.clear()
                live.retries.clear()
                live.resumable = False
                live.recount()
                if live.over:
                    self._finish(live, now)
                    continue
            late = now >= live.expires_at + self._grace
            for terminal_id, state in list(live.states.items()):
                if state in UNACKNOWLEDGED_STATES or (late and not live.final(state)):
                    self._move(live, terminal_id, DeliveryState.EXPIRED, now)

    def _move(
        self,
        live: LiveBroadcast,
        terminal_id: str,
        new: DeliveryState,
        at: datetime,
        reason: str | None = None,
        detail: str | None = None,
        by: str | None = None,
    ) -> None:
        old = live.states[terminal_id]
        live.states[terminal_id] = new
        if not live.awaits(terminal_id):
            live.retries.pop(terminal_id, None)
        values: dict[str, object] = {"state": new.value, "updated_at": at}
        if new in FINAL_STATES:
            values.update(finished_at=at, reason=reason, detail=detail, by_command=by)
        else:
            values[_TIMESTAMP_COLUMN[new]] = at
            if old is DeliveryState.PREEMPTED:
                values.update(finished_at=None, reason=None, detail=None, by_command=None)
        if live.final(new) and not live.final(old):
            live.open -= 1
        self._writer.update(self._deliveries, (live.id, terminal_id), values)
        self._transitions[new].inc()
        if live.over:
            self._finish(live, at)

    def _confirm_cancel(self, live: LiveBroadcast, ack: Ack, final: DeliveryState, at: datetime) -> None:
        """A terminal we had marked cancelled says how it really ended (`cancelled`, or `completed`
        if it played before the cancel reached it): record that instead."""
        live.owed_cancel.discard(ack.terminal_id)
        live.retries.pop(ack.terminal_id, None)
        live.states[ack.terminal_id] = final
        values = {"state": final.value, "reason": ack.reason, "detail": ack.detail, "by_command": ack.by}
        self._writer.update(self._deliveries, (live.id, ack.terminal_id), values | {"updated_at": at})
        if live.over:
            self._finish(live, at)

    def _finish(self, live: LiveBroadcast, at: datetime) -> None:
        expired = any(state is DeliveryState.EXPIRED for state in live.states.values())
        if live.state is BroadcastState.CANCELLING:
            live.state = BroadcastState.CANCELLED
        elif live.state is not BroadcastState.SUPERSEDED:
            live.state = BroadcastState.EXPIRED if expired else BroadcastState.FINISHED
        self._writer.update(self._broadcasts, (live.id,), {"state": live.state.value, "finished_at": at})
        del self._live[live.id]
        self._recently_over[live.id] = None
        while len(self._recently_over) > 1000:
            self._recently_over.popitem(last=False)
        log.info("broadcast %s %s", live.id, live.state.value)


def _why_ignored(current: DeliveryState, new: DeliveryState) -> str:
    if current is new:
        return Ignored.DUPLICATE
    return Ignored.AFTER_FINAL if current in FINAL_STATES else Ignored.BACKWARDS
