"""Text to speech, offline, with eSpeak NG.

Why eSpeak NG: it runs with no network and no model download, is packaged by Debian (`apt-get
install espeak-ng`) and every other distribution, speaks Mandarin (voice `cmn`) and English among
about a hundred languages, and takes milliseconds per sentence on a small board. Neural engines
(Piper and the like) sound better but need voice models fetched from the internet and far more
CPU; a loudspeaker's announcement must first of all be understood, and be there when the network
is not. The engine is found on `PATH` (or given by CUNXIANG_TTS_COMMAND); without it Cunxiang says
so and sends text only, for terminals that speak it themselves.

Speech is cached in the media store by engine version, voice, speed and text: the same alert
text is synthesised once.
"""

import hashlib
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.media import AudioInfo, MediaStore, inspect_audio
from devices.voices import SpeechFailed, voice_for

log = logging.getLogger(__name__)

# eSpeak NG voices for the BCP 47 tags we are given; the first that matches wins.
DEFAULT_SPEED_WPM = 150
_TIMEOUT_S = 60


class SpeechUnavailable(RuntimeError):
    """No text-to-speech engine here."""


@dataclass(frozen=True)
class Speech:
    info: AudioInfo
    voice: str


class SpeechEngine:
    """eSpeak NG behind a cache."""

    def __init__(self, store: MediaStore, command: str | None = None) -> None:
        self._store = store
        self._binary = shutil.which(command or "espeak-ng")
        self.version = self._version() if self._binary else None

    @property
    def available(self) -> bool:
        return self._binary is not None

    def describe(self) -> str:
        if self._binary is None:
            return "none: install espeak-ng (apt-get install espeak-ng); text is sent for terminals to speak"
        return f"{self.version} ({self._binary})"

    def speak(self, text: str, language: str, speed: int | None = None) -> Speech:
        """WAV audio of `text`, from the cache or newly made; raises SpeechUnavailable or SpeechFailed."""
        if self._binary is None:
            raise SpeechUnavailable("no text-to-speech engine is installed (apt-get install espeak-ng)")
        voice, wpm = voice_for(language), speed or DEFAULT_SPEED_WPM
        key = hashlib.sha256(f"{self.version}\n{voice}\n{wpm}\n{text}".encode()).hexdigest()
        cached = self._store.directory / "speech" / f"{key}.name"
        if cached.exists():
            path = self._store.path(cached.read_text(encoding="ascii").strip())
            if path is not None:
                return Speech(inspect_audio(path.read_bytes(), max_bytes=1 << 31), f"espeak-ng:{voice}")
        data = self._synthesise(text, voice, wpm)
        info = inspect_audio(data, max_bytes=1 << 31)
        self._store.put(data, info)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(info.name, encoding="ascii")
        return Speech(info, f"espeak-ng:{voice}")

    def _synthesise(self, text: str, voice: str, wpm: int) -> bytes:
        assert self._binary is not None
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory) / "speech.wav"
            try:
                # The text goes on standard input, so no text is ever read as an option.
                subprocess.run(
                    [self._binary, "-v", voice, "-s", str(wpm), "-w", str(out), "--stdin"],
                    input=text.encode(),
                    capture_output=True,
                    timeout=_TIMEOUT_S,
                    check=True,
                )
            except subprocess.CalledProcessError as exc:
                raise SpeechFailed(f"espeak-ng failed: {exc.stderr.decode(errors='replace')[:200]}") from None
            except subprocess.TimeoutExpired:
                raise SpeechFailed(f"espeak-ng took more than {_TIMEOUT_S} s") from None
            return out.read_bytes()

    def _version(self) -> str:
        assert self._binary is not None
        try:
            done = subprocess.run([self._binary, "--version"], capture_output=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("espeak-ng at %s does not answer (%s); speaking disabled", self._binary, exc)
            self._binary = None
            return ""
        return done.stdout.decode(errors="replace").split("Data at")[0].strip()
