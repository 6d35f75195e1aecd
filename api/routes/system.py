"""Liveness and metrics for operators' monitoring."""

from typing import Literal

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from api.deps import ControllerDep, SessionDep

router = APIRouter(tags=["system"])


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    mqtt: Literal["connected", "disconnected"]
    database: str = Field(description="`ok`, or `error: <exception>`")
    accepting: bool = Field(description="whether broadcasts are taken (false while shutting down)")
    write_backlog: int = Field(description="rows waiting for the batched database writer")
    failed_tasks: list[str] = Field(description="background tasks of the controller that died")
    speech: str = Field(description="the text-to-speech engine, or why there is none (not a failure)")


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "degraded: the answer says what is wrong"}},
)
def healthz(response: Response, session: SessionDep, controller: ControllerDep) -> Health:
    """200 when the database answers and the broker is connected; 503 with what is wrong otherwise."""
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:
        database = f"error: {type(exc).__name__}"
    healthy = (
        controller.connected and database == "ok" and controller.accepting and not controller.failed_tasks
    )
    response.status_code = status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status="ok" if healthy else "degraded",
        mqtt="connected" if controller.connected else "disconnected",
        database=database,
        accepting=controller.accepting,
        write_backlog=controller.writer.backlog,
        failed_tasks=list(controller.failed_tasks),
        # Not a failure: without an engine text goes out as text, for terminals that speak it.
        speech=controller.speech.describe(),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def metrics(controller: ControllerDep) -> Response:
    """Prometheus text exposition; terminal ids are never labels."""
    return Response(generate_latest(controller.metrics.registry), media_type=CONTENT_TYPE_LATEST)
