"""Which terminals are online, from their retained status topic (birth and will) and heartbeats.

Kept in memory for every registered terminal and written to the database only when it changes.
A status from an older session than the one we know (a will delayed past a reconnect) is ignored.
"""

from dataclasses import dataclass
from datetime import datetime

from controller.metrics import Metrics
from controller.models import Terminal
from controller.writer import DbWriter
from devices.messages import Heartbeat, Presence, TerminalStatus

UNKNOWN = "unknown"


@dataclass
class TerminalPresence:
    region: str
    presence: str = UNKNOWN
    session: int | None = None
    since: datetime | None = None
    last_seen: datetime | None = None
    last_heartbeat: Heartbeat | None = None


class PresenceOutcome:
    UNKNOWN_TERMINAL = "unknown_terminal"
    STALE_SESSION = "stale_session"


class PresenceTracker:
    """Presence of the registered terminals."""

    def __init__(self, writer: DbWriter, metrics: Metrics) -> None:
        self._writer = writer
        self._metrics = metrics
        self._terminals: dict[str, TerminalPresence] = {}
        self._counts: dict[str, int] = {p.value: 0 for p in Presence} | {UNKNOWN: 0}
        self._table = Terminal.__table__  # type: ignore[attr-defined]

    def load(self, terminals: list[Terminal]) -> None:
        for terminal in terminals:
            self._add(
                terminal.id,
                TerminalPresence(
                    region=terminal.region_code,
                    presence=terminal.presence,
                    session=terminal.session,
                    since=terminal.presence_since,
                ),
            )

    def register(self, terminal_id: str, region: str) -> None:
        if terminal_id not in self._terminals:
            self._add(terminal_id, TerminalPresence(region=region))

    def known(self, terminal_id: str) -> bool:
        return terminal_id in self._terminals

    def get(self, terminal_id: str) -> TerminalPresence | None:
        return self._terminals.get(terminal_id)

    def on_status(self, status: TerminalStatus, at: datetime) -> str | None:
        """Apply a birth, goodbye or will; returns a rejection label, or None when applied."""
        entry = self._terminals.get(status.terminal_id)
        if entry is None:
            return PresenceOutcome.UNKNOWN_TERMINAL
        if entry.session is not None and status.session < entry.session:
            return PresenceOutcome.STALE_SESSION
        entry.last_seen = at
        if entry.presence == status.state.value and entry.session == status.session:
            return None
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
        return None

    def on_heartbeat(self, heartbeat: Heartbeat, at: datetime) -> str | None:
        entry = self._terminals.get(heartbeat.terminal_id)
        if entry is None:
            return PresenceOutcome.UNKNOWN_TERMINAL
        entry.last_seen, entry.last_heartbeat = at, heartbeat
        return None

    def _add(self, terminal_id: str, entry: TerminalPresence) -> None:
        self._terminals[terminal_id] = entry
        self._count(entry.presence, +1)

    def _count(self, presence: str, delta: int) -> None:
        self._counts[presence] = self._counts.get(presence, 0) + delta
        self._metrics.terminals_by_presence.labels(presence).set(self._counts[presence])
