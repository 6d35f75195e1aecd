"""The media files terminals download: programme audio and synthesised speech, by content name."""

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from api.deps import ControllerDep

router = APIRouter(tags=["media"])
_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "ogg": "audio/ogg"}


@router.get("/media/{name}", response_class=FileResponse)
def media(name: str, controller: ControllerDep) -> FileResponse:
    """A media file by its content name (`<sha256>.<format>`), with range requests for resuming."""
    path = controller.media.path(name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no media {name!r}")
    media_type = _TYPES[path.suffix[1:]]
    return FileResponse(
        path, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000, immutable"}
    )
