"""Which terminals are online: their retained status (birth, goodbye, will), their heartbeats, and
the silence between them; with a history of changes and flapping detection.

Kept in memory for every terminal in service and written to the database only when it changes:
the current presence on the terminal's row, each change as a `PresenceEvent`.

- A birth (`online`) is always believed: only the live connection can publish it. A `lost` or
  `offline` of an older session than the one we know (a will delayed past a reconnect) is ignored.
- A heartbeat from a terminal we had as offline or lost means it is online again.
- A terminal online by its status that has sent nothing for `misses` heartbeat intervals (its
  own, announced at birth) is `offline`: its connection may look alive to the broker (a stuck
  agent, a half-open link) while it plays nothing. The clock for that starts again whenever the
  controller (re)connects, since nothing could be heard while it was away.
- A terminal that changes presence `flap_changes` times within `flap_window` is flapping: one
  `flapping` event is stored, not a row per change, and a `stable` one when it has been quiet
  for a whole window.
"""

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from controller.metrics import Metrics
from controller.models import PresenceEvent, Terminal
from controller.writer import DbWriter
from devices.messages import Heartbeat, Presence, TerminalStatus

UNKNOWN = "unknown"
DEFAULT_HEARTBEAT_INTERVAL_S = 30


class Why:
    """Why a presence changed (stored with each event)."""

    BIRTH = "birth"
    GOODBYE = "goodbye"
    WILL = "will"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    FLAPPING = "flapping"
    STABLE = "stable"


_WHY_FOR_STATUS = {Presence.ONLINE: Why.BIRTH, Presence.OFFLINE: Why.GOODBYE, Presence.LOST: Why.WILL}


@dataclass
class TerminalPresence:
    presence: str = UNKNOWN
    session: int | None = None
    since: datetime | None = None
    last_seen: datetime | None = None
    last_heartbeat: Heartbeat | None = None
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S
    changes: deque[datetime] = field(default_factory=deque)
    flapping: bool = False
    silent: bool = False
    """offline because its heartbeats stopped, though its connection's retained birth still says online"""


class StatusOutcome(NamedTuple):
    """What a status message did: a rejection label, or whether it announced a new connection."""

    rejection: str | None = None
    new_birth: bool = False


class Stranger(NamedTuple):
    """A terminal id heard on the broker that is not registered (or not in service)."""

    terminal_id: str
    last_seen: datetime
    region: str | None
    messages: int


UNKNOWN_TERMINAL = "unknown_terminal"
STALE_SESSION = "stale_session"
# Terminals are often switched on before they are registered; their retained birth is not sent
# again, so the last status of that many unregistered terminals is kept for when they are.
STRANGERS_REMEMBERED = 10_000


class PresenceTracker:
    """Presence of the terminals in service."""

    def __init__(
        self,
        writer: DbWriter,
        metrics: Metrics,
        *,
        misses: int = 3,
        flap_changes: int = 5,
        flap_window: timedelta = timedelta(minutes=10),
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._misses = misses
        self._flap_changes = flap_changes
        self._flap_window = flap_window
        self._terminals: dict[str, TerminalPresence] = {}
        self._counts: dict[str, int] = {p.value: 0 for p in Presence} | {UNKNOWN: 0}
        self._table = Terminal.__table__  # type: ignore[attr-defined]
        self._events = PresenceEvent.__table__  # type: ignore[attr-defined]
        self._strangers: OrderedDict[str, tuple[TerminalStatus | None, Stranger]] = OrderedDict()

    def load(self, terminals: list[Terminal]) -> None:
        for terminal in terminals:
            self._add(
                terminal.id,
                TerminalPresence(
                    presence=terminal.presence, session=terminal.session, since=terminal.presence_since
                ),
            )

    def register(self, terminal_id: str) -> None:
        """Track a terminal new in service, with the status it announced before, if any."""
        if terminal_id in self._terminals:
            return
        self._add(terminal_id, TerminalPresence())
        earlier = self._strangers.pop(terminal_id, None)
        if earlier is not None and earlier[0] is not None:
            self.on_status(earlier[0], earlier[1].last_seen)

    def forget(self, terminal_id: str) -> None:
        """Stop tracking a terminal taken out of service."""
        entry = self._terminals.pop(terminal_id, None)
        if entry is not None:
            self._count(entry.presence, -1)

    def get(self, terminal_id: str) -> TerminalPresence | None:
        return self._terminals.get(terminal_id)

    def strangers(self) -> list[Stranger]:
        """Unregistered terminal ids heard lately, the most recent first."""
        return [stranger for _status, stranger in reversed(self._strangers.values())]

    def on_status(self, status: TerminalStatus, at: datetime) -> StatusOutcome:
        """Apply a birth, goodbye or will."""
        entry = self._terminals.get(status.terminal_id)
        if entry is None:
            self._stranger(status.terminal_id, at, status)
            return StatusOutcome(rejection=UNKNOWN_TERMINAL)
        birth = status.state is Presence.ONLINE
        if not birth and entry.session is not None and status.session < entry.session:
            return StatusOutcome(rejection=STALE_SESSION)
        entry.last_seen = at
        if birth and entry.silent and status.session == entry.session:
            # The same connection's retained birth again (the controller reconnected): the terminal
            # is still the one that went quiet; only a heartbeat or a new connection brings it back.
            return StatusOutcome()
        entry.silent = False
        entry.heartbeat_interval_s = status.heartbeat_interval_s
        if entry.presence == status.state.value and entry.session == status.session:
            return StatusOutcome()
        extra: dict[str, object] = {"session": status.session}
        if status.firmware is not None:
            extra["firmware"] = status.firmware
        self._change(status.terminal_id, entry, status.state.value, _WHY_FOR_STATUS[status.state], at, extra)
        entry.session = status.session
        return StatusOutcome(new_birth=birth)

    def on_heartbeat(self, heartbeat: Heartbeat, at: datetime) -> str | None:
        """Record telemetry; returns a rejection label for a terminal not in service."""
        entry = self._terminals.get(heartbeat.terminal_id)
        if entry is None:
            self._stranger(heartbeat.terminal_id, at, None)
            return UNKNOWN_TERMINAL
        entry.last_seen, entry.last_heartbeat = at, heartbeat
        entry.silent = False
        if entry.presence != Presence.ONLINE:
            self._change(heartbeat.terminal_id, entry, Presence.ONLINE.value, Why.HEARTBEAT, at)
        return None

    def heard_from_now_on(self, at: datetime) -> None:
        """The controller (re)connected: silence while it was away is nobody's fault."""
        for entry in self._terminals.values():
            if entry.last_seen is None or entry.last_seen < at:
                entry.last_seen = at

    def check(self, now: datetime) -> None:
        """Mark silent terminals offline, and end flapping that has calmed down."""
        for terminal_id, entry in self._terminals.items():
            if entry.presence == Presence.ONLINE and entry.last_seen is not None:
                allowed = timedelta(seconds=entry.heartbeat_interval_s * self._misses)
                if now - entry.last_seen > allowed:
                    entry.silent = True
                    self._change(terminal_id, entry, Presence.OFFLINE.value, Why.HEARTBEAT_TIMEOUT, now)
            if entry.flapping and (not entry.changes or now - entry.changes[-1] >= self._flap_window):
                entry.flapping = False
                entry.changes.clear()
                self._event(terminal_id, entry, Why.STABLE, now)

    def _change(
        self,
        terminal_id: str,
        entry: TerminalPresence,
        presence: str,
        why: str,
        at: datetime,
        extra: dict[str, object] | None = None,
    ) -> None:
        self._count(entry.presence, -1)
        entry.presence, entry.since = presence, at
        self._count(entry.presence, +1)
        self._writer.update(
            self._table, (terminal_id,), {"presence": presence, "presence_since": at} | (extra or {})
        )
        entry.changes.append(at)
        while entry.changes and at - entry.changes[0] > self._flap_window:
            entry.changes.popleft()
        if entry.flapping:
            return
        if len(entry.changes) >= self._flap_changes:
            entry.flapping = True
            self._metrics.presence_flapping.inc()
            why = Why.FLAPPING
        self._event(terminal_id, entry, why, at, extra)

    def _event(
        self,
        terminal_id: str,
        entry: TerminalPresence,
        why: str,
        at: datetime,
        extra: dict[str, object] | None = None,
    ) -> None:
        session = (extra or {}).get("session", entry.session)
        self._writer.insert(
            self._events,
            {
                "terminal_id": terminal_id,
                "at": at,
                "presence": entry.presence,
                "reason": why,
                "session": session,
            },
        )

    def _stranger(self, terminal_id: str, at: datetime, status: TerminalStatus | None) -> None:
        known = self._strangers.pop(terminal_id, None)
        region = status.region if status is not None else (known[1].region if known else None)
        messages = known[1].messages + 1 if known else 1
        self._strangers[terminal_id] = (
            status or (known[0] if known else None),
            Stranger(terminal_id, at, region, messages),
        )
        while len(self._strangers) > STRANGERS_REMEMBERED:
            self._strangers.popitem(last=False)

    def _add(self, terminal_id: str, entry: TerminalPresence) -> None:
        self._terminals[terminal_id] = entry
        self._count(entry.presence, +1)

    def _count(self, presence: str, delta: int) -> None:
        self._counts[presence] = self._counts.get(presence, 0) + delta
        self._metrics.terminals_by_presence.labels(presence).set(self._counts[presence])
