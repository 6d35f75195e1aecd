"""The media files terminals download: programme audio and synthesised speech, by content name."""

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from api.auth import Problem
from api.deps import ControllerDep

router = APIRouter(tags=["media"])
_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "ogg": "audio/ogg"}
_AUDIO = {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in _TYPES.values()}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}


@router.get(
    "/media/{name}",
    response_class=FileResponse,
    responses={
        200: {"content": _AUDIO, "description": "the whole file"},
        206: {"content": _AUDIO, "description": "the part asked for in `Range`"},
        400: {"content": _TEXT, "description": "a malformed `Range` header"},
        404: {"model": Problem, "description": "no such media"},
        416: {"content": _TEXT, "description": "the `Range` lies beyond the file"},
    },
)
def media(name: str, controller: ControllerDep) -> FileResponse:
    """A media file by its content name (`<sha256>.<format>`), with range requests for resuming."""
    path = controller.media.path(name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no media {name!r}")
    media_type = _TYPES[path.suffix[1:]]
    return FileResponse(
        path, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000, immutable"}
    )
