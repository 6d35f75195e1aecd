"""`cunxiang serve` and `cunxiang regions load`."""

import logging
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from sqlmodel import Session

from api.app import create_app
from controller.db import init_schema, make_engine
from controller.embedded_broker import port_is_free
from controller.regions import DivisionsError, load_divisions_file
from controller.settings import Settings

log = logging.getLogger(__name__)


def http_server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    return uvicorn.Server(config)


async def run_server(settings: Settings, host: str | None, port: int | None) -> int:
    broker_port = settings.embedded_broker_port
    if settings.embedded_broker and not port_is_free(settings.embedded_broker_host, broker_port):
        print(
            f"cannot start the embedded MQTT broker: port {broker_port} is in use (another broker?). "
            f"Set CUNXIANG_MQTT_URL=mqtt://127.0.0.1:{broker_port} to use that broker, or "
            "CUNXIANG_EMBEDDED_BROKER_PORT to another port.",
            file=sys.stderr,
        )
        return 1
    app = create_app(settings)
    server = http_server(app, host or settings.http_host, port if port is not None else settings.http_port)
    await server.serve()
    return 0 if server.started else 1


def load_regions(settings: Settings, path: Path) -> int:
    engine = make_engine(settings.database_url)
    init_schema(engine)
    try:
        with Session(engine) as session:
            written = load_divisions_file(session, path)
    except (OSError, DivisionsError) as exc:
        print(f"cannot load {path}: {exc}", file=sys.stderr)
        return 1
    print(f"{written} regions added or changed from {path}")
    return 0
