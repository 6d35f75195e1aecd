"""Telemetry history for the terminals' charts: heartbeats downsampled to at most one stored sample
per terminal per interval, written through the batched writer, and deleted after some days.

A county's terminals send a heartbeat every ~30 s; keeping each would be millions of rows a day
that no chart needs. The hot path costs a dict lookup and a comparison per heartbeat; the writer
inserts the few samples due in its next batch, never a commit per heartbeat.
"""

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import Session, col, select

from controller.models import TelemetrySample
from controller.writer import DbWriter
from devices.messages import Heartbeat


class TelemetrySampler:
    """Keeps a terminal's heartbeat as a sample when its last sample is `every` old."""

    def __init__(self, writer: DbWriter, every: timedelta) -> None:
        self._writer = writer
        self._every = every
        self._due: dict[str, datetime] = {}
        """terminal → when its next sample is due"""
        self._table = TelemetrySample.__table__  # type: ignore[attr-defined]

    def on_heartbeat(self, heartbeat: Heartbeat, at: datetime) -> None:
        due = self._due.get(heartbeat.terminal_id)
        if due is not None and at < due:
            return
        self._due[heartbeat.terminal_id] = at + self._every
        self._writer.insert(
            self._table,
            {
                "terminal_id": heartbeat.terminal_id,
                "at": at,
                "signal_dbm": heartbeat.signal_dbm,
                "temperature_c": heartbeat.temperature_c,
                "battery_pct": heartbeat.battery_pct,
                "supply": heartbeat.supply.value if heartbeat.supply is not None else None,
                "volume": heartbeat.volume,
            },
        )

    def forget(self, terminal_id: str) -> None:
        """A terminal out of service: if it comes back, its first heartbeat is sampled."""
        self._due.pop(terminal_id, None)


def telemetry_samples(
    session: Session, terminal_id: str, since: datetime, until: datetime, limit: int
) -> list[TelemetrySample]:
    """The latest `limit` samples of a terminal from `since` to `until`, oldest first."""
    rows = session.exec(
        select(TelemetrySample)
        .where(
            TelemetrySample.terminal_id == terminal_id,
            col(TelemetrySample.at) >= since,
            col(TelemetrySample.at) <= until,
        )
        .order_by(col(TelemetrySample.at).desc())
        .limit(limit)
    ).all()
    return list(reversed(rows))


def prune_telemetry(session: Session, before: datetime) -> int:
    """Delete samples older than `before`; returns how many."""
    result = session.connection().execute(delete(TelemetrySample).where(col(TelemetrySample.at) < before))
    session.commit()
    return result.rowcount
