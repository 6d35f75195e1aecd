"""The programme library: uploaded audio, or text spoken offline."""

import asyncio
import contextlib
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status
from pydantic import BaseModel

from api.auth import AUTH_RESPONSES, UNREADABLE, Operator, Problem, Viewer
from api.deps import ControllerDep, SessionDep
from controller.media import inspect_audio
from controller.models import Programme
from controller.programmes import SpokenProgramme, add_programme, get_programme, list_programmes
from controller.speech import SpeechUnavailable

router = APIRouter(prefix="/programmes", tags=["programmes"], responses=AUTH_RESPONSES)


class ProgrammePublic(BaseModel):
    id: str
    title: str
    text: str | None
    language: str
    speed: int | None
    media: str | None
    media_format: str | None
    media_size: int | None
    media_sha256: str | None
    duration_s: float | None
    voice: str | None
    created_at: datetime


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ProgrammePublic,
    responses={**UNREADABLE, 422: {"model": Problem, "description": "the speech engine failed on the text"}},
)
async def speak_programme(spec: SpokenProgramme, who: Operator, controller: ControllerDep) -> Programme:
    """A programme from text, spoken now by the offline engine (eSpeak NG) and kept as audio. Without
    an engine it is stored as text only (the answer has no `media`), for terminals that speak."""
    speech = None
    with contextlib.suppress(SpeechUnavailable):
        speech = await controller.speak(spec.text, spec.language, spec.speed)
    programme = await controller.writer.call(
        lambda session: add_programme(
            session,
            spec.title,
            text=spec.text,
            language=spec.language,
            speed=spec.speed,
            audio=speech.info if speech else None,
            voice=speech.voice if speech else None,
        )
    )
    await controller.record(who.audit("programme.create", "programme", programme.id, title=spec.title))
    return programme


@router.post(
    "/upload",
    status_code=status.HTTP_201_CREATED,
    response_model=ProgrammePublic,
    responses={
        **UNREADABLE,
        413: {"model": Problem, "description": "larger than CUNXIANG_MAX_UPLOAD_BYTES"},
        422: {"model": Problem, "description": "not audio we can play"},
    },
)
async def upload_programme(
    request: Request,
    who: Operator,
    controller: ControllerDep,
    title: Annotated[str, Form(min_length=1, max_length=200)],
    file: Annotated[UploadFile, File(description="MP3, WAV or Ogg audio (checked by content)")],
    text: Annotated[str | None, Form(max_length=4000, description="what it says, a fallback")] = None,
    language: Annotated[str, Form(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "zh-CN",
) -> Programme:
    """Upload recorded audio. 413 above CUNXIANG_MAX_UPLOAD_BYTES; 422 if it is not audio we can play."""
    limit = controller.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"the upload is larger than the {limit}-byte limit"
        )
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"the file is larger than the {limit}-byte limit"
        )
    info = await asyncio.to_thread(inspect_audio, data, limit)
    await asyncio.to_thread(controller.media.put, data, info)
    programme = await controller.writer.call(
        lambda session: add_programme(session, title, text=text or None, language=language, audio=info)
    )
    await controller.record(
        who.audit("programme.upload", "programme", programme.id, title=title, sha256=info.sha256)
    )
    return programme


@router.get("", response_model=list[ProgrammePublic])
def programmes(who: Viewer, session: SessionDep, limit: int = 200) -> list[Programme]:
    return list_programmes(session, max(1, min(limit, 1000)))


@router.get(
    "/{programme_id}",
    response_model=ProgrammePublic,
    responses={404: {"model": Problem, "description": "no such programme"}},
)
def programme(programme_id: str, who: Viewer, session: SessionDep) -> Programme:
    return get_programme(session, programme_id)
