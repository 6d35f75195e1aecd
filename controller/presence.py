"""Which terminals are online, from their retained status topic (birth and will) and heartbeats.

Kept in memory for every registered terminal and written to the database only when it changes.
A birth (`online`) is always believed: only the live connection can publish it. A `lost` or
`offline` from an older session than the one we know (a will delayed past a reconnect) is ignored.
"""

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from controller.metrics import Metrics
from controller.models import Terminal
from controller.writer import DbWriter
from devices.messages import Heartbeat, Presence, TerminalStatus

UNKNOWN = "unknown"


@dataclass
class TerminalPresence:
    presence: str = UNKNOWN
    session: int | None = None
    since: datetime | None = None
    last_seen: datetime | None = None
    last_heartbeat: Heartbeat | None = None


class StatusOutcome(NamedTuple):
    """What a status message did: a rejection label, or whether it announced a new connection."""

    rejection: str | None = None
    new_birth: bool = False


UNKNOWN_TERMINAL = "unknown_terminal"
STALE_SESSION = "stale_session"
# Terminals are often switched on before they are registered; their retained birth is not sent
# again, so the last status of that many unregistered terminals is kept for when they are.
STRANGERS_REMEMBERED = 10_000


class PresenceTracker:
    """Presence of the registered terminals."""

    def __init__(self, writer: DbWriter, metrics: Metrics) -> None:
        self._writer = writer
        self._metrics = metrics
        self._terminals: dict[str, TerminalPresence] = {}
        self._counts: dict[str, int] = {p.value: 0 for p in Presence} | {UNKNOWN: 0}
        self._table = Terminal.__table__  # type: ignore[attr-defined]
        self._strangers: OrderedDict[str, tuple[TerminalStatus, datetime]] = OrderedDict()

    def load(self, terminals: list[Terminal]) -> None:
        for terminal in terminals:
            self._add(
                terminal.id,
                TerminalPresence(
                    presence=terminal.presence, session=terminal.session, since=terminal.presence_since
                ),
            )

    def register(self, terminal_id: str) -> None:
        """Track a newly registered terminal, with the status it announced before, if any."""
        if terminal_id in self._terminals:
            return
        self._add(terminal_id, TerminalPresence())
        earlier = self._strangers.pop(terminal_id, None)
        if earlier is not None:
            self.on_status(*earlier)

    def forget(self, terminal_id: str) -> None:
        """Stop tracking a terminal taken out of service."""
        entry = self._terminals.pop(terminal_id, None)
        if entry is not None:
            self._count(entry.presence, -1)

    def get(self, terminal_id: str) -> TerminalPresence | None:
        return self._terminals.get(terminal_id)

    def on_status(self, status: TerminalStatus, at: datetime) -> StatusOutcome:
        """Apply a birth, goodbye or will."""
        entry = self._terminals.get(status.terminal_id)
        if entry is None:
            self._strangers[status.terminal_id] = (status, at)
            self._strangers.move_to_end(status.terminal_id)
            while len(self._strangers) > STRANGERS_REMEMBERED:
                self._strangers.popitem(last=False)
            return StatusOutcome(rejection=UNKNOWN_TERMINAL)
        birth = status.state is Presence.ONLINE
        if not birth and entry.session is not None and status.session < entry.session:
            return StatusOutcome(rejection=STALE_SESSION)
        entry.last_seen = at
        if entry.presence == status.state.value and entry.session == status.session:
            return StatusOutcome()
        self._count(entry.presence, -1)
        entry.presence, entry.session, entry.since = status.state.value, status.session, at
        self._count(entry.presence, +1)
        values: dict[str, object] = {
            "presence": entry.presence,
            "presence_since": at,
            "session": status.session,
        }
        if status.firmware is not None:
            values["firmware"] = status.firmware
        self._writer.update(self._table, (status.terminal_id,), values)
        return StatusOutcome(new_birth=birth)

    def on_heartbeat(self, heartbeat: Heartbeat, at: datetime) -> str | None:
        """Record telemetry; returns a rejection label for an unregistered terminal."""
        entry = self._terminals.get(heartbeat.terminal_id)
        if entry is None:
            return UNKNOWN_TERMINAL
        entry.last_seen, entry.last_heartbeat = at, heartbeat
        return None

    def _add(self, terminal_id: str, entry: TerminalPresence) -> None:
        self._terminals[terminal_id] = entry
        self._count(entry.presence, +1)

    def _count(self, presence: str, delta: int) -> None:
        self._counts[presence] = self._counts.get(presence, 0) + delta
        self._metrics.terminals_by_presence.labels(presence).set(self._counts[presence])
