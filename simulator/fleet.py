"""Which terminals to simulate and how they behave."""

import random
from dataclasses import dataclass

from devices.identifiers import is_region_code
from devices.messages import Amplifier, BroadcastStatus, Content, Speaker, Supply, announcement


@dataclass(frozen=True)
class SimulatedSpec:
    terminal_id: str
    region: str


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


def fleet_for_villages(villages: list[str], per_village: int) -> list[SimulatedSpec]:
    """`per_village` terminals in each village, with ids `sim-<village code>-<n>`."""
    if per_village < 1:
        raise ValueError("per_village must be at least 1")
    specs: list[SimulatedSpec] = []
    for village in villages:
        if not is_region_code(village):
            raise ValueError(f"not a region code: {village!r}")
        specs.extend(SimulatedSpec(f"sim-{village}-{n}", village) for n in range(1, per_village + 1))
    return specs
