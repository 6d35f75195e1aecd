"""Which terminals to simulate, where they stand, and how they behave."""

import hashlib
import math
import random
from dataclasses import dataclass

from devices.identifiers import is_region_code
from devices.messages import Amplifier, BroadcastStatus, Content, Speaker, Supply, announcement


@dataclass(frozen=True)
class SimulatedSpec:
    terminal_id: str
    region: str

    @property
    def position(self) -> tuple[float, float]:
        """A synthetic (latitude, longitude): see `synthetic_position`."""
        return synthetic_position(self.terminal_id, self.region)

    def registration(self) -> dict[str, object]:
        """How it is registered (`POST /api/v1/terminals`), with its synthetic position."""
        latitude, longitude = self.position
        return {"id": self.terminal_id, "region": self.region, "latitude": latitude, "longitude": longitude}


# Roughly the extent of 咸安区, inside its border, so a demonstration map of it looks plausible.
SYNTHETIC_LATITUDES = (29.60, 29.90)
SYNTHETIC_LONGITUDES = (114.10, 114.50)
_VILLAGE_SPREAD = 0.04
_TERMINAL_SPREAD = 0.002
TOWNSHIP_CODE_LENGTH = 9


def synthetic_position(terminal_id: str, region: str) -> tuple[float, float]:
    """Where a simulated terminal is drawn: invented, not surveyed. Each township's centre falls
    within the county by a hash of its code, each village around its township's centre by a hash
    of its own, each terminal a few hundred metres from its village's point. The same codes always
    give the same places, so maps and screenshots are reproducible."""
    u, v = _unit_pair(region[:TOWNSHIP_CODE_LENGTH])
    latitude = SYNTHETIC_LATITUDES[0] + u * (SYNTHETIC_LATITUDES[1] - SYNTHETIC_LATITUDES[0])
    longitude = SYNTHETIC_LONGITUDES[0] + v * (SYNTHETIC_LONGITUDES[1] - SYNTHETIC_LONGITUDES[0])
    if len(region) > TOWNSHIP_CODE_LENGTH:
        latitude, longitude = _scattered(latitude, longitude, region, _VILLAGE_SPREAD)
    latitude, longitude = _scattered(latitude, longitude, terminal_id, _TERMINAL_SPREAD)
    return round(latitude, 6), round(longitude, 6)


def _scattered(latitude: float, longitude: float, key: str, spread: float) -> tuple[float, float]:
    """A point up to `spread` degrees (of latitude) from the given one, in a direction set by `key`."""
    u, v = _unit_pair(key)
    # sqrt: points fall evenly over the disc rather than bunched at its centre
    angle, distance = 2 * math.pi * u, spread * math.sqrt(v)
    return (
        latitude + distance * math.sin(angle),
        longitude + distance * math.cos(angle) / math.cos(math.radians(latitude)),
    )


def _unit_pair(key: str) -> tuple[float, float]:
    """Two numbers in [0, 1) from a stable hash of `key` (Python's own hash changes per process)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4]) / 2**32, int.from_bytes(digest[4:8]) / 2**32


@dataclass(frozen=True)
class Behaviour:
    """How a simulated terminal acts. Times in seconds; delays are drawn uniformly from the range."""

    playback_s: float | None = None
    """Seconds one play of any content takes; None: as long as real speech or audio would."""
    start_delay_s: tuple[float, float] = (0.05, 0.3)
    heartbeat_interval_s: int = 30
    firmware: str = "sim-1.0.0"
    drop_first_commands: int = 0
    """Commands lost on the way in (a weak 4G link): the first this many never reach the terminal."""

    def start_delay(self, rng: random.Random) -> float:
        return rng.uniform(*self.start_delay_s)

    def playback(self, content: Content, status: BroadcastStatus = BroadcastStatus.ACTUAL) -> float:
        """How long one play of `content` lasts, with the exercise or test announcement before it."""
        if self.playback_s is not None:
            return self.playback_s
        spoken = announcement(status, content.language)
        return (len(spoken) / SPEECH_CHARS_PER_S if spoken else 0.0) + self._content_length(content)

    def _content_length(self, content: Content) -> float:
        if content.audio is not None:
            seconds = content.audio.duration_s or content.audio.size / AUDIO_BYTES_PER_S
            return max(MIN_PLAY_S, seconds)
        return max(MIN_PLAY_S, len(content.text or "") / SPEECH_CHARS_PER_S)


@dataclass(frozen=True)
class Condition:
    """A simulated terminal's health at one moment; a scenario changes it over time."""

    powered: bool = True
    """False: switched off or cut off, its connection dropped without a goodbye (the broker then
    publishes its will, `lost`), and it stays away until powered again"""
    flap_period_s: float | None = None
    """losing and regaining its connection every this many seconds (a bad link), when set"""
    speaker: Speaker = Speaker.OK
    amplifier: Amplifier = Amplifier.OK
    supply: Supply = Supply.MAINS
    battery_pct: int | None = None
    signal_dbm: int | None = None
    """None: a healthy -95 to -60 dBm"""
    temperature_c: float | None = None
    """None: a mild 15 to 35 °C"""
    answer_delay_s: float = 0.0
    """how long it takes to act on a command (an overloaded or slow terminal)"""
    loss: float = 0.0
    """the share of messages lost each way (commands in, acknowledgements out)"""

    @property
    def silent(self) -> bool:
        """Whether it plays nothing audible even when it plays."""
        return self.speaker is not Speaker.OK or self.amplifier is Amplifier.FAULT


# Broadcast Mandarin is read at about 4 characters a second (240 a minute); audio is taken to be
# 128 kbit/s MP3. A loudspeaker's chime and amplifier warm-up make even one word last seconds.
SPEECH_CHARS_PER_S = 4.0
AUDIO_BYTES_PER_S = 16_000
MIN_PLAY_S = 3.0


SIMULATED_PREFIX = "sim-"
"""the ids of simulated terminals start so (the map says their positions are synthetic)"""


def fleet_for_villages(villages: list[str], per_village: int) -> list[SimulatedSpec]:
    """`per_village` terminals in each village, with ids `sim-<village code>-<n>`."""
    if per_village < 1:
        raise ValueError("per_village must be at least 1")
    specs: list[SimulatedSpec] = []
    for village in villages:
        if not is_region_code(village):
            raise ValueError(f"not a region code: {village!r}")
        specs.extend(
            SimulatedSpec(f"{SIMULATED_PREFIX}{village}-{n}", village) for n in range(1, per_village + 1)
        )
    return specs
