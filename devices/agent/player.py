"""Sound out of the amplifier: text spoken with the offline TTS command, files played with the
player command for their format, the volume set with the volume command. Every one is a child
process; cancelling the coroutine that waits for it ends it, which is how a cancel or a
pre-emption stops what the loudspeaker is saying."""

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path

from devices.agent.cache import keep_within, used
from devices.agent.config import AgentConfig, fill
from devices.audio import sniff
from devices.voices import SpeechFailed, voice_for

log = logging.getLogger(__name__)

_TTS_TIMEOUT_S = 120
_VOLUME_TIMEOUT_S = 10
_STOP_GRACE_S = 2.0


class PlaybackFailed(Exception):
    """Something could not be spoken or played; `detail` says what (it goes into the `failed` ack)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Player:
    """Runs the configured commands; speech is kept in `speech_dir`, so a text is synthesised once
    (within the configured limit, the speech played longest ago dropped first)."""

    def __init__(self, config: AgentConfig, speech_dir: Path) -> None:
        self._config = config
        self._speech_dir = speech_dir

    async def speech(self, text: str, language: str) -> Path:
        """A WAV of `text` spoken in `language`, from the cache or made now."""
        try:
            voice = voice_for(language)
        except SpeechFailed as exc:
            raise PlaybackFailed(str(exc)) from None
        template = self._config.tts
        key = hashlib.sha256("\n".join([*template, voice, text]).encode()).hexdigest()
        path = self._speech_dir / f"{key}.wav"
        if path.is_file():
            used(path)
            return path
        self._speech_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part.wav")
        command = fill(template, voice=voice, file=str(partial), text=text)
        await _run(command, stdin=text.encode(), timeout=_TTS_TIMEOUT_S)
        if not partial.is_file() or partial.stat().st_size == 0:
            raise PlaybackFailed(f"{command[0]} wrote no speech")
        partial.replace(path)
        await asyncio.to_thread(keep_within, self._speech_dir, self._config.cache_limit_bytes, path)
        return path

    async def play(self, path: Path) -> None:
        """Play one file to its end with the player for its format."""
        with path.open("rb") as data:
            audio_format = sniff(data.read(16))
        template = self._config.player.get(audio_format or "")
        if template is None:
            raise PlaybackFailed(f"no player configured for {audio_format or 'unknown'} audio")
        await _run(fill(template, file=str(path)))

    async def set_volume(self, volume: int | None) -> None:
        """Set the amplifier's volume for a command that names one, if a volume command is set."""
        if volume is None or self._config.volume_command is None:
            return
        await _run(fill(self._config.volume_command, volume=str(volume)), timeout=_VOLUME_TIMEOUT_S)


async def _run(command: list[str], stdin: bytes | None = None, timeout: float | None = None) -> None:
    """Run `command` to its end; raise PlaybackFailed if it cannot start, fails or takes too long.
    Cancelled, it ends the process (SIGTERM, then SIGKILL) before it gives way."""
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise PlaybackFailed(f"cannot run {command[0]}: {exc}") from None
    try:
        _, errors = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        await _end(process)
        raise PlaybackFailed(f"{command[0]} took more than {timeout} s") from None
    except asyncio.CancelledError:
        await asyncio.shield(_end(process))
        raise
    if process.returncode != 0:
        said = errors.decode(errors="replace").strip()[-200:]
        raise PlaybackFailed(f"{command[0]} exited with {process.returncode}: {said}")


async def _end(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), _STOP_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
