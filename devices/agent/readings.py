"""What a Linux host can tell about itself, for heartbeats: uptime, temperature, battery, supply,
and the signal strength from a command when one is configured. A reading the host does not offer,
or that makes no sense, is left out rather than guessed (the heartbeat's members are optional)."""

import asyncio
import logging
from pathlib import Path
from typing import Any

from devices.messages import Supply

log = logging.getLogger(__name__)

_SIGNAL_TIMEOUT_S = 5


def host_readings(root: Path = Path("/")) -> dict[str, Any]:
    """Heartbeat members read from /proc and /sys under `root` (another root in tests)."""
    readings: dict[str, Any] = {}
    uptime = _number(root / "proc/uptime")
    if uptime is not None and uptime >= 0:
        readings["uptime_s"] = int(uptime)
    millidegrees = _number(root / "sys/class/thermal/thermal_zone0/temp")
    if millidegrees is not None and -60 <= millidegrees / 1000 <= 150:
        readings["temperature_c"] = round(millidegrees / 1000, 1)
    readings.update(_power(root / "sys/class/power_supply"))
    return readings


def _power(supplies: Path) -> dict[str, Any]:
    """Battery charge, and whether the terminal runs on it: on battery when a battery discharges,
    on mains when a mains supply is online."""
    found: dict[str, Any] = {}
    if not supplies.is_dir():
        return found
    for supply in sorted(supplies.iterdir()):
        kind = _text(supply / "type")
        if kind == "Battery":
            capacity = _number(supply / "capacity")
            if capacity is not None and 0 <= capacity <= 100 and "battery_pct" not in found:
                found["battery_pct"] = int(capacity)
            if _text(supply / "status") == "Discharging":
                found["supply"] = Supply.BATTERY
        elif kind == "Mains" and _text(supply / "online") == "1":
            found.setdefault("supply", Supply.MAINS)
    return found


async def signal_dbm(command: list[str] | None) -> int | None:
    """The signal strength the configured command prints (an integer dBm), if it does."""
    if command is None:
        return None
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError as exc:
        log.warning("signal command %s cannot run: %s", command[0], exc)
        return None
    try:
        out, _ = await asyncio.wait_for(process.communicate(), _SIGNAL_TIMEOUT_S)
        value = int(float(out.decode().strip()))
    except (ValueError, TimeoutError) as exc:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.warning("signal command %s gave no reading: %r", command[0], exc)
        return None
    return value if -150 <= value <= 0 else None


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _number(path: Path) -> float | None:
    text = _text(path)
    try:
        return float(text.split()[0]) if text else None
    except ValueError:
        return None
