"""`terminal.toml`: what one loudspeaker terminal needs to know (deploy/terminal.example.toml).

Commands are argument lists, never shell lines, with `{name}` placeholders filled in per argument
(`fill`), so nothing a command carries (its text, a file name) can be read by a shell.
"""

import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from devices.identifiers import REGION_CODE_PATTERN, TERMINAL_ID_PATTERN
from devices.signing import DEFAULT_WINDOW, KeySet

Argv = Annotated[list[str], Field(min_length=1)]

DEFAULT_PLAYERS = {
    "wav": ["aplay", "-q", "{file}"],
    "mp3": ["mpg123", "-q", "{file}"],
    "ogg": ["ogg123", "-q", "{file}"],
}
# The text goes on standard input (as the controller gives it to eSpeak NG): a text beginning with
# "-" could otherwise be read as an option. A template may still name `{text}`.
DEFAULT_TTS = ["espeak-ng", "-v", "{voice}", "-w", "{file}", "--stdin"]
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


class AgentConfig(BaseModel):
    """One terminal's settings. Relative paths are relative to the configuration file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    terminal_id: Annotated[str, Field(pattern=TERMINAL_ID_PATTERN)]
    region: Annotated[str, Field(pattern=REGION_CODE_PATTERN)]
    broker: Annotated[str, Field(pattern=r"^(mqtts?|tcp)://")]
    """mqtt://host:port or mqtts://host:port"""
    username: str | None = None
    """the MQTT user name; default the terminal id (as `cunxiang deploy mosquitto-acl` writes it)"""
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    """for mqtts://: the CA certificates to trust (default the system's)"""
    cert_file: Path | None = None
    key_file: Path | None = None
    keyset: Path
    """the controller's public key set (`cunxiang keys export`)"""
    state_dir: Path
    """where what was answered and the downloaded audio are kept; must survive a reboot"""
    topic_prefix: str = "cx"
    heartbeat_interval_s: Annotated[int, Field(ge=1, le=3600)] = 30
    command_window_s: Annotated[int, Field(ge=10, le=86_400)] = int(DEFAULT_WINDOW.total_seconds())
    firmware: Annotated[str, Field(max_length=64)] | None = None
    player: dict[str, Argv] = Field(default_factory=lambda: dict(DEFAULT_PLAYERS))
    """a player per audio format (wav, mp3, ogg), `{file}` the file to play"""
    tts: Argv = Field(default_factory=lambda: list(DEFAULT_TTS))
    """speech synthesis: `{voice}`, `{file}` (the WAV to write), `{text}`; the text is also on stdin"""
    volume_command: Argv | None = None
    """run before playing a command that sets a volume, `{volume}` 0–100 (e.g. amixer)"""
    signal_command: Argv | None = None
    """prints the signal strength in dBm (e.g. from mmcli), for heartbeats"""
    download_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    cache_mb: Annotated[int, Field(ge=1)] = 1024
    """downloaded audio and synthesised speech kept, each at most this many MB (10^6 bytes): the
    files played longest ago are removed first, never the one about to play"""

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    @property
    def cache_limit_bytes(self) -> int:
        return self.cache_mb * 1_000_000

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.command_window_s)

    def mqtt_password(self) -> str | None:
        if self.password_file is None:
            return self.password
        return self.password_file.read_text(encoding="utf-8").strip()

    def keys(self) -> KeySet:
        return KeySet.model_validate_json(self.keyset.read_bytes())


_PATHS = ("password_file", "ca_file", "cert_file", "key_file", "keyset", "state_dir")


def load_config(path: Path) -> AgentConfig:
    """Read and check `terminal.toml`; raises ConfigError naming what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for name in _PATHS:
        if isinstance(data.get(name), str):
            data[name] = path.parent / Path(data[name]).expanduser()
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'config'}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def fill(template: list[str], **values: str) -> list[str]:
    """The command with each `{name}` of `values` replaced in every argument, in one pass (a
    text that itself says `{file}` stays as it is); other braces are left alone."""
    return [_PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), argument) for argument in template]
