"""Liveness and metrics for operators' monitoring."""

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import ControllerDep, SessionDep

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz(response: Response, session: SessionDep, controller: ControllerDep) -> dict[str, object]:
    """200 when the database answers and the broker is connected; 503 with what is wrong otherwise."""
    checks: dict[str, object] = {"mqtt": "connected" if controller.connected else "disconnected"}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    checks["accepting"] = controller.accepting
    checks["write_backlog"] = controller.writer.backlog
    checks["failed_tasks"] = controller.failed_tasks
    # Not a failure: without an engine text goes out as text, for terminals that speak it.
    checks["speech"] = controller.speech.describe()
    healthy = (
        checks["mqtt"] == "connected"
        and checks["database"] == "ok"
        and controller.accepting
        and not controller.failed_tasks
    )
    response.status_code = status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ok" if healthy else "degraded", **checks}


@router.get("/metrics")
def metrics(controller: ControllerDep) -> Response:
    return Response(generate_latest(controller.metrics.registry), media_type=CONTENT_TYPE_LATEST)
