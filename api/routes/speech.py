"""Hearing a text before sending it: the offline engine's speech of it, as terminals will hear it."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AUTH_RESPONSES, UNREADABLE, Operator, Problem
from api.deps import ControllerDep
from controller.speech import SpeechUnavailable

router = APIRouter(prefix="/speech", tags=["speech"], responses=AUTH_RESPONSES)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(min_length=1, max_length=4000)]
    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "zh-CN"


class SpeechAudio(BaseModel):
    url: str = Field(description="where to fetch it (the media terminals download)")
    duration_s: float | None
    voice: str


@router.post(
    "",
    response_model=SpeechAudio,
    responses={
        **UNREADABLE,
        422: {"model": Problem, "description": "the engine could not speak it"},
        503: {"model": Problem, "description": "no speech engine is installed"},
    },
)
async def speak(body: SpeechRequest, who: Operator, controller: ControllerDep) -> SpeechAudio:
    """Speak the text with the offline engine (cached by text), for the "listen" button."""
    try:
        speech = await controller.speak(body.text, body.language)
    except SpeechUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return SpeechAudio(
        url=f"/media/{speech.info.name}", duration_s=speech.info.duration_s, voice=speech.voice
    )
