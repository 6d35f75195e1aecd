"""Scripted faults for simulated terminals, from a TOML file, for tests and demonstrations.

    # every terminal of 汀泗桥镇 loses power 10 s in, and comes back at 60 s
    [[event]]
    at = 10
    region = "421202100"
    fault = "power_off"

    [[event]]
    at = 60
    region = "421202100"
    fault = "power_on"

    # one village's loudspeaker goes quiet
    [[event]]
    terminals = "sim-421202101001-*"
    fault = "speaker_fault"

Each event applies one `fault` to the terminals that match both `terminals` (a shell-style
pattern over ids, default every one) and `region` (a code prefix, default every one), `at`
seconds after the fleet is online (default 0). Faults add to what a terminal already has;
`healthy` clears them all.
"""

import asyncio
import fnmatch
import tomllib
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from devices.messages import Amplifier, Speaker, Supply
from simulator.fleet import Condition
from simulator.terminal import SimulatedTerminal


class FaultKind(StrEnum):
    POWER_OFF = "power_off"
    POWER_ON = "power_on"
    FLAPPING = "flapping"
    STEADY = "steady"
    SPEAKER_FAULT = "speaker_fault"
    AMPLIFIER_FAULT = "amplifier_fault"
    REPAIRED = "repaired"
    ON_BATTERY = "on_battery"
    MAINS = "mains"
    WEAK_SIGNAL = "weak_signal"
    HOT = "hot"
    SLOW = "slow"
    LOSSY = "lossy"
    HEALTHY = "healthy"


class FaultEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: Annotated[float, Field(ge=0)] = 0
    terminals: str = "*"
    region: Annotated[str, Field(pattern=r"^[0-9]{2,12}$")] | None = None
    fault: FaultKind
    period_s: Annotated[float, Field(gt=0)] = 20.0
    """flapping: a connection lost and regained every this many seconds"""
    seconds: Annotated[float, Field(ge=0)] = 5.0
    """slow: the delay before acting on each command"""
    share: Annotated[float, Field(ge=0, le=1)] = 0.3
    """lossy: the share of messages lost each way"""
    battery_pct: Annotated[int, Field(ge=0, le=100)] = 60
    signal_dbm: Annotated[int, Field(ge=-150, le=0)] = -112
    temperature_c: Annotated[float, Field(ge=-60, le=150)] = 78.0

    def matches(self, terminal_id: str, region: str) -> bool:
        in_region = self.region is None or region.startswith(self.region)
        return in_region and fnmatch.fnmatchcase(terminal_id, self.terminals)

    def applied_to(self, condition: Condition) -> Condition:
        changes: dict[FaultKind, dict[str, Any]] = {
            FaultKind.POWER_OFF: {"powered": False},
            FaultKind.POWER_ON: {"powered": True},
            FaultKind.FLAPPING: {"flap_period_s": self.period_s},
            FaultKind.STEADY: {"flap_period_s": None},
            FaultKind.SPEAKER_FAULT: {"speaker": Speaker.OPEN_CIRCUIT},
            FaultKind.AMPLIFIER_FAULT: {"amplifier": Amplifier.FAULT},
            FaultKind.REPAIRED: {"speaker": Speaker.OK, "amplifier": Amplifier.OK},
            FaultKind.ON_BATTERY: {"supply": Supply.BATTERY, "battery_pct": self.battery_pct},
            FaultKind.MAINS: {"supply": Supply.MAINS, "battery_pct": None},
            FaultKind.WEAK_SIGNAL: {"signal_dbm": self.signal_dbm},
            FaultKind.HOT: {"temperature_c": self.temperature_c},
            FaultKind.SLOW: {"answer_delay_s": self.seconds},
            FaultKind.LOSSY: {"loss": self.share},
        }
        if self.fault is FaultKind.HEALTHY:
            return Condition()
        return replace(condition, **changes[self.fault])


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: list[FaultEvent] = []

    @model_validator(mode="after")
    def _in_time_order(self) -> "Scenario":
        self.event.sort(key=lambda e: e.at)
        return self


class ScenarioError(ValueError):
    """A scenario file that cannot be read or makes no sense; the message says where."""


def load_scenario(path: Path) -> Scenario:
    try:
        return Scenario.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ScenarioError(f"{path}: {where}: {first['msg']}") from None


async def play(scenario: Scenario, terminals: list[SimulatedTerminal]) -> None:
    """Apply each event at its time (seconds from now) to the terminals it names."""
    start = asyncio.get_running_loop().time()
    for event in scenario.event:
        await asyncio.sleep(max(0.0, start + event.at - asyncio.get_running_loop().time()))
        for terminal in terminals:
            if event.matches(terminal.spec.terminal_id, terminal.spec.region):
                terminal.set_condition(event.applied_to(terminal.condition))
