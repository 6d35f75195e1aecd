"""Terminal faults from heartbeats: an alarm is raised when a heartbeat first shows a fault and
cleared when one shows it gone; each alarm is stored with its start, end and acknowledgement.

A heartbeat that does not report a measurement (a terminal without a temperature sensor) leaves
the alarms about it as they are.
"""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session, col, select

from controller.metrics import Metrics
from controller.models import Alarm, Terminal
from controller.writer import DbWriter
from devices.messages import Amplifier, Heartbeat, Speaker, Supply


class Fault(StrEnum):
    SPEAKER = "speaker_fault"
    AMPLIFIER = "amplifier_fault"
    ON_BATTERY = "on_battery"
    LOW_SIGNAL = "low_signal"
    HIGH_TEMPERATURE = "high_temperature"


SILENCING = frozenset({Fault.SPEAKER, Fault.AMPLIFIER})
"""faults that keep a terminal from being heard at all"""


@dataclass(frozen=True)
class Thresholds:
    low_signal_dbm: int = -105
    high_temperature_c: float = 70.0


def faults_in(heartbeat: Heartbeat, limits: Thresholds) -> Iterator[tuple[Fault, str | None]]:
    """(fault, detail if present else None) for every fault this heartbeat says something about."""
    if heartbeat.speaker is not None:
        yield Fault.SPEAKER, None if heartbeat.speaker is Speaker.OK else f"speaker {heartbeat.speaker.value}"
    if heartbeat.amplifier is not None:
        present = heartbeat.amplifier is Amplifier.FAULT
        yield Fault.AMPLIFIER, "amplifier fault" if present else None
    if heartbeat.supply is not None:
        on_battery = heartbeat.supply is Supply.BATTERY
        level = f" at {heartbeat.battery_pct}%" if heartbeat.battery_pct is not None else ""
        yield Fault.ON_BATTERY, f"mains power lost, on battery{level}" if on_battery else None
    if heartbeat.signal_dbm is not None:
        weak = heartbeat.signal_dbm < limits.low_signal_dbm
        yield Fault.LOW_SIGNAL, f"signal {heartbeat.signal_dbm} dBm" if weak else None
    if heartbeat.temperature_c is not None:
        hot = heartbeat.temperature_c > limits.high_temperature_c
        yield Fault.HIGH_TEMPERATURE, f"{heartbeat.temperature_c:.0f} °C" if hot else None


class AlarmNotFound(LookupError):
    pass


class AlarmTracker:
    """The active alarms of every terminal, in memory; raising and clearing go to the writer."""

    def __init__(self, writer: DbWriter, metrics: Metrics, limits: Thresholds) -> None:
        self._writer = writer
        self._metrics = metrics
        self._limits = limits
        self._active: dict[str, dict[Fault, str]] = {}
        """terminal → fault → the id of its open alarm"""
        self._table = Alarm.__table__  # type: ignore[attr-defined]

    def load(self, open_alarms: list[Alarm]) -> None:
        for alarm in open_alarms:
            self._active.setdefault(alarm.terminal_id, {})[Fault(alarm.kind)] = alarm.id

    def active(self, terminal_id: str) -> set[Fault]:
        return set(self._active.get(terminal_id, {}))

    def on_heartbeat(self, heartbeat: Heartbeat, at: datetime) -> None:
        current = self._active.get(heartbeat.terminal_id, {})
        for fault, detail in faults_in(heartbeat, self._limits):
            alarm_id = current.get(fault)
            if detail is not None and alarm_id is None:
                alarm_id = uuid.uuid4().hex
                self._active.setdefault(heartbeat.terminal_id, {})[fault] = alarm_id
                row = {"id": alarm_id, "terminal_id": heartbeat.terminal_id, "kind": fault.value}
                self._writer.insert(
                    self._table,
                    row
                    | {"detail": detail, "started_at": at, "ended_at": None}
                    | {"acknowledged_at": None, "acknowledged_by": None},
                )
                self._metrics.alarms_raised.labels(fault.value).inc()
            elif detail is None and alarm_id is not None:
                del current[fault]
                self._writer.update(self._table, (alarm_id,), {"ended_at": at})

    def forget(self, terminal_id: str, at: datetime) -> None:
        """A terminal out of service: its open alarms end now."""
        for alarm_id in self._active.pop(terminal_id, {}).values():
            self._writer.update(self._table, (alarm_id,), {"ended_at": at})


def open_alarms(session: Session) -> list[Alarm]:
    return list(session.exec(select(Alarm).where(col(Alarm.ended_at).is_(None))).all())


def acknowledge(session: Session, alarm_id: str, by: str, at: datetime) -> Alarm:
    """An operator has seen the alarm (it stays open until the fault clears)."""
    alarm = session.get(Alarm, alarm_id)
    if alarm is None:
        raise AlarmNotFound(f"no alarm {alarm_id!r}")
    if alarm.acknowledged_at is None:
        alarm.acknowledged_at, alarm.acknowledged_by = at, by
        session.add(alarm)
        session.commit()
        session.refresh(alarm)
    return alarm


def alarm_region(session: Session, alarm_id: str) -> str:
    """The region of the alarm's terminal; raises AlarmNotFound."""
    row = session.exec(
        select(Terminal.region_code)
        .join(Alarm, col(Alarm.terminal_id) == col(Terminal.id))
        .where(Alarm.id == alarm_id)
    ).first()
    if row is None:
        raise AlarmNotFound(f"no alarm {alarm_id!r}")
    return row
