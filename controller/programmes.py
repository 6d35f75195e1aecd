"""The programme library: uploaded audio, and text turned into speech, ready to broadcast."""

import secrets
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from controller.media import AudioInfo
from controller.models import Programme
from devices.messages import AudioRef, Content


class SpokenProgramme(BaseModel):
    """A programme written as text; spoken by the offline engine if there is one."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, Field(min_length=1, max_length=200)]
    text: Annotated[str, Field(min_length=1, max_length=4000)]
    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "zh-CN"
    speed: Annotated[int, Field(ge=80, le=450, description="words a minute")] | None = None


class ProgrammeNotFound(LookupError):
    pass


def new_programme_id() -> str:
    return "p" + secrets.token_hex(8)


def add_programme(
    session: Session,
    title: str,
    *,
    text: str | None = None,
    language: str = "zh-CN",
    speed: int | None = None,
    audio: AudioInfo | None = None,
    voice: str | None = None,
) -> Programme:
    programme = Programme(
        id=new_programme_id(), title=title, text=text, language=language, speed=speed, voice=voice
    )
    if audio is not None:
        programme.media, programme.media_format = audio.name, audio.format
        programme.media_size, programme.media_sha256 = audio.size, audio.sha256
        programme.duration_s = audio.duration_s
    session.add(programme)
    session.commit()
    session.refresh(programme)
    return programme


def get_programme(session: Session, programme_id: str) -> Programme:
    programme = session.get(Programme, programme_id)
    if programme is None:
        raise ProgrammeNotFound(f"no programme {programme_id!r}")
    return programme


def list_programmes(session: Session, limit: int) -> list[Programme]:
    return list(session.exec(select(Programme).order_by(col(Programme.created_at).desc()).limit(limit)).all())


def content_of(programme: Programme, media_url: str) -> Content:
    """What a command carries to play the programme: its audio (downloaded and checked by the
    terminal), and its text as the fallback a terminal can speak itself."""
    audio = None
    if programme.media is not None and programme.media_size and programme.media_sha256:
        audio = AudioRef(
            url=f"{media_url}/{programme.media}",
            size=programme.media_size,
            sha256=programme.media_sha256,
            duration_s=programme.duration_s,
        )
    return Content(text=programme.text, language=programme.language, audio=audio)
