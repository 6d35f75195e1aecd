"""The media store: audio files kept under their SHA-256, checked by content, served to terminals.

A file's format is decided by its bytes (RIFF/WAVE, an MPEG audio frame or ID3 tag, an Ogg page),
never by its name, and it must parse as that format with a duration (mutagen), so a renamed
document or a truncated file is refused before anything is stored.
"""

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mutagen
from mutagen.mp3 import MP3
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from devices.audio import sniff

FORMATS = ("mp3", "wav", "ogg")
_PARSERS: dict[str, tuple[type[mutagen.FileType], ...]] = {
    "wav": (WAVE,),
    "mp3": (MP3,),
    "ogg": (OggVorbis, OggOpus),
}


class MediaRejected(ValueError):
    """Not audio we can play, or too large."""


@dataclass(frozen=True)
class AudioInfo:
    format: str
    size: int
    sha256: str
    duration_s: float

    @property
    def name(self) -> str:
        return f"{self.sha256}.{self.format}"


def inspect_audio(data: bytes, max_bytes: int) -> AudioInfo:
    """Check `data` is MP3, WAV or Ogg audio of at most `max_bytes`; raises MediaRejected."""
    if len(data) > max_bytes:
        raise MediaRejected(f"the file is {len(data)} bytes; the limit is {max_bytes}")
    kind = sniff(data)
    if kind is None:
        raise MediaRejected("not MP3, WAV or Ogg audio (judged by its content, not its name)")
    duration: float | None = None
    for parser in _PARSERS[kind]:
        try:
            info = parser(io.BytesIO(data)).info
        except Exception:  # mutagen raises many types for bad input: try the next parser
            continue
        duration = getattr(info, "length", None)
        break
    if not duration or duration <= 0:
        raise MediaRejected(f"the file starts like {kind.upper()} audio but cannot be read as such")
    return AudioInfo(kind, len(data), hashlib.sha256(data).hexdigest(), round(float(duration), 3))


class MediaStore:
    """Files in one directory, named by content; writing is atomic and idempotent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path | None:
        """The file for `name` (`<sha256>.<format>`) if it is one of ours."""
        stem, _, extension = name.partition(".")
        if len(stem) != 64 or extension not in FORMATS or any(c not in "0123456789abcdef" for c in stem):
            return None
        path = self.directory / name
        return path if path.is_file() else None

    def put(self, data: bytes, info: AudioInfo) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / info.name
        if not target.exists():
            descriptor, temporary = tempfile.mkstemp(dir=self.directory, suffix=".part")
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)
        return target
