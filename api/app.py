"""The FastAPI application; its lifespan starts and stops the controller."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from api.console import audit_page, cap_page, fleet, pages, schedules_page, session
from api.console import map as county_map
from api.console.session import SignInRequired, redirect_to_sign_in
from api.limits import BodyLimit
from api.routes import (
    accounts,
    alarms,
    audit,
    auth,
    broadcast_events,
    broadcasts,
    cap,
    cap_export,
    groups,
    media,
    programmes,
    regions,
    schedules,
    speech,
    system,
    telemetry,
    terminals,
)
from controller.accounts import AccountNotFound, AccountRejected
from controller.alarms import AlarmNotFound
from controller.approvals import ApprovalRefused
from controller.broadcasts import BroadcastConflict, BroadcastNotFound, BroadcastRejected
from controller.groups import GroupNotFound, GroupRejected
from controller.media import MediaRejected
from controller.programmes import ProgrammeNotFound
from controller.schedules import ScheduleNotFound, ScheduleRejected
from controller.service import Controller, NotAccepting
from controller.settings import Settings
from controller.terminals import TerminalNotFound, TerminalsRejected
from devices.voices import SpeechFailed

UPLOAD_PATHS = ("/api/v1/programmes/upload", "/api/v1/terminals/import")
CAP_PATH = "/api/v1/cap"


def create_app(settings: Settings) -> FastAPI:
    """An app that owns a controller built from `settings` for the length of its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        controller = Controller(settings)
        await controller.start()
        app.state.controller = controller
        try:
            yield
        finally:
            await controller.stop()

    app = FastAPI(
        title="Cunxiang (村响)",
        summary="County emergency-broadcast and village-loudspeaker controller",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimit,
        default=settings.max_request_bytes,
        larger={
            **{path: settings.max_upload_bytes + 64 * 1024 for path in UPLOAD_PATHS},
            # A little over the CAP limit, so a message just over it is refused and kept on record.
            CAP_PATH: settings.cap_max_bytes + 64 * 1024,
        },
    )
    app.include_router(auth.router, prefix="/api/v1")
    app.include_router(accounts.router, prefix="/api/v1")
    app.include_router(audit.router, prefix="/api/v1")
    app.include_router(broadcasts.router, prefix="/api/v1")
    app.include_router(broadcast_events.router, prefix="/api/v1")
    app.include_router(cap.router, prefix="/api/v1")
    app.include_router(cap_export.router, prefix="/api/v1")
    app.include_router(terminals.router, prefix="/api/v1")
    app.include_router(telemetry.router, prefix="/api/v1")
    app.include_router(groups.router, prefix="/api/v1")
    app.include_router(alarms.router, prefix="/api/v1")
    app.include_router(schedules.router, prefix="/api/v1")
    app.include_router(programmes.router, prefix="/api/v1")
    app.include_router(media.router)
    app.include_router(regions.router, prefix="/api/v1")
    app.include_router(speech.router, prefix="/api/v1")
    app.include_router(system.router)
    app.include_router(session.router)
    app.include_router(pages.router)
    app.include_router(schedules_page.router)
    app.include_router(audit_page.router)
    app.include_router(cap_page.router)
    app.include_router(fleet.router)
    app.include_router(county_map.router)
    static = resources.files("api.console").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_exception_handler(SignInRequired, redirect_to_sign_in)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input back, and fails (500) when it is not UTF-8: bytes
        # that do not decode, or a lone surrogate ("\ud800") from a JSON string.
        errors = jsonable_encoder(
            exc.errors(),
            custom_encoder={
                bytes: lambda b: b.decode(errors="replace"),
                str: lambda s: s.encode(errors="replace").decode(),
            },
        )
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(BroadcastRejected)
    @app.exception_handler(TerminalsRejected)
    @app.exception_handler(GroupRejected)
    @app.exception_handler(ScheduleRejected)
    @app.exception_handler(MediaRejected)
    @app.exception_handler(SpeechFailed)
    @app.exception_handler(AccountRejected)
    async def unprocessable(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(BroadcastNotFound)
    @app.exception_handler(GroupNotFound)
    @app.exception_handler(TerminalNotFound)
    @app.exception_handler(AlarmNotFound)
    @app.exception_handler(ScheduleNotFound)
    @app.exception_handler(ProgrammeNotFound)
    @app.exception_handler(AccountNotFound)
    async def not_found(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(BroadcastConflict)
    async def conflict(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(ApprovalRefused)
    async def forbidden(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc)})

    @app.exception_handler(NotAccepting)
    async def unavailable(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    return app
