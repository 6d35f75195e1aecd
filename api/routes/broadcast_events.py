"""Live progress of a broadcast as Server-Sent Events, so an operator watches coverage climb."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from api.auth import AUTH_RESPONSES, Problem, Viewer
from api.deps import ControllerDep, read
from api.routes.broadcasts import visible
from controller.models import Broadcast, broadcast_over
from controller.regions import region_names
from controller.reports import broadcast_report, delivery_regions, tally
from controller.service import Controller

router = APIRouter(prefix="/broadcasts", tags=["broadcasts"])

TICK_S = 0.25
KEEPALIVE_S = 15.0


class _Target(NamedTuple):
    """What the stream needs to know once: the targets, each terminal's region, region names."""

    targets: list[str]
    regions_of: dict[str, str]
    names: dict[str, str]


@router.get(
    "/{broadcast_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **AUTH_RESPONSES,
        404: {"model": Problem, "description": "no such broadcast"},
    },
)
async def broadcast_events(
    broadcast_id: str, who: Viewer, request: Request, controller: ControllerDep
) -> StreamingResponse:
    """`progress` events (counts per state and per region) whenever they change, then one `end`
    event with the full report when the broadcast is over."""
    await read(controller, lambda session: visible(who, session, broadcast_id))
    target = await asyncio.to_thread(_load_target, controller, broadcast_id)
    if target is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no broadcast {broadcast_id!r}")
    return StreamingResponse(
        _events(request, controller, broadcast_id, target),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    request: Request, controller: Controller, broadcast_id: str, target: _Target
) -> AsyncIterator[str]:
    last: dict[str, Any] | None = None
    quiet = 0.0
    while not await request.is_disconnected():
        live = controller.tracker.find(broadcast_id)
        if live is None:
            # Not tracked: over, or stored a moment ago and not tracked yet; the stored state tells.
            with contextlib.suppress(Exception):
                await controller.writer.flush()
            report = await asyncio.to_thread(_report, controller, broadcast_id)
            if broadcast_over(report["state"], report["finished_at"]):
                yield _event("end", report)
                return
            await asyncio.sleep(TICK_S)
            continue
        states = ((target.regions_of.get(t, ""), s.value) for t, s in live.states.items())
        counts, buckets = tally(states, target.targets)
        snapshot = {
            "id": broadcast_id,
            "state": live.state.value,
            "terminals": len(live.states),
            "counts": counts,
            "by_region": [
                {"code": code, "name": target.names.get(code), "counts": c}
                for code, c in sorted(buckets.items())
            ],
        }
        if snapshot != last:
            yield _event("progress", snapshot)
            last, quiet = snapshot, 0.0
        elif quiet >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(TICK_S)
        quiet += TICK_S


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


def _load_target(controller: Controller, broadcast_id: str) -> _Target | None:
    with Session(controller.engine) as session:
        broadcast = session.get(Broadcast, broadcast_id)
        if broadcast is None:
            return None
        regions_of = delivery_regions(session, broadcast_id)
        _counts, buckets = tally(((region, "pending") for region in regions_of.values()), broadcast.regions)
        return _Target(broadcast.regions, regions_of, region_names(session, buckets))


def _report(controller: Controller, broadcast_id: str) -> dict[str, Any]:
    with Session(controller.engine) as session:
        report = broadcast_report(
            session,
            broadcast_id,
            presence_of=controller.presence_of,
            controller_connected=controller.connected,
        )
        assert report is not None
        return report.model_dump(mode="json")
