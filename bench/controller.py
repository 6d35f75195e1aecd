"""The controller under test, in a process of its own (not a public command).

    python -m bench.controller --port PORT --settings JSON

Runs the real app (`api.app.create_app`) under uvicorn exactly as `cunxiang serve` does, with the
settings given as JSON (field name → value, on top of the environment), plus three read-only
routes for the benchmarks, under `/bench`:

- `GET /bench/state`: terminals by presence, the writer's backlog (rows recorded and not yet
  committed, counting a batch being written);
- `GET /bench/progress/{id}`: a live broadcast's deliveries per state, counted from the
  tracker's memory (about a millisecond at 10,000 terminals, where the public report of
  `GET /api/v1/broadcasts/{id}` reads and builds every row), or `"over": true` once it has left
  memory;
- `GET /bench/commits`: the batches the database writer committed (when, how many updates and
  rows per table).

Running the controller in its own process lets the benchmark read its CPU time and peak memory
(VmHWM) from /proc without counting the benchmark's own work.
"""

import argparse
import asyncio
import json
import logging
import sys
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request

from api.app import create_app
from controller.service import Controller
from controller.settings import SettingsError, load_settings
from deploy.serve import http_server


def bench_routes(app: FastAPI) -> None:
    """Add the benchmark's read-only routes to `app`."""

    def controller_of(request: Request) -> Controller:
        controller: Controller = request.app.state.controller
        return controller

    @app.get("/bench/state", include_in_schema=False)
    def state(request: Request) -> dict[str, Any]:
        controller = controller_of(request)
        return {
            "connected": controller.connected,
            "presence": dict(controller.presence._counts),
            "backlog": controller.writer.backlog + getattr(controller.writer, "writing", 0),
        }

    @app.get("/bench/progress/{broadcast_id}", include_in_schema=False)
    def progress(broadcast_id: str, request: Request) -> dict[str, Any]:
        controller = controller_of(request)
        live = controller.tracker.find(broadcast_id)
        backlog = controller.writer.backlog + getattr(controller.writer, "writing", 0)
        if live is None:
            return {"over": True, "counts": {}, "backlog": backlog}
        counts = Counter(state.value for state in live.states.values())
        return {"over": False, "counts": dict(counts), "backlog": backlog}

    @app.get("/bench/commits", include_in_schema=False)
    def commits(request: Request) -> list[dict[str, Any]]:
        controller = controller_of(request)
        log = getattr(controller.writer, "commits", [])  # none before commit 6e0091f
        return [
            {"at": c.at, "updates": c.updates, "rows": c.rows, "started": getattr(c, "started", None)}
            for c in list(log)
        ]


async def serve(port: int, overrides: dict[str, Any]) -> int:
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    app = create_app(settings)
    bench_routes(app)
    server = http_server(app, settings.http_host, port)
    await server.serve()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.controller", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--settings", required=True, help="JSON object of settings")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)-7s controller %(name)s: %(message)s"
    )
    return asyncio.run(serve(args.port, json.loads(args.settings)))


if __name__ == "__main__":
    sys.exit(main())
