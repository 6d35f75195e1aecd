"""`cunxiang demo`: the whole system on one machine, with a simulated county, in one command."""

import asyncio
import logging
import sys
import time

from api.app import create_app
from controller.embedded_broker import free_port, port_is_free
from controller.regions import villages_under
from controller.service import Controller
from controller.settings import Settings
from controller.terminals import TerminalSpec
from deploy.serve import http_server
from simulator.fleet import fleet_for_villages

log = logging.getLogger(__name__)


def _port(host: str, wanted: int, what: str) -> int:
    if port_is_free(host, wanted):
        return wanted
    chosen = free_port(host)
    print(f"port {wanted} is taken; {what} uses port {chosen} instead", flush=True)
    return chosen


async def run_demo(
    settings: Settings, port: int, region: str, per_village: int, playback: float | None
) -> int:
    if settings.mqtt_url is None:
        broker_port = _port(
            settings.embedded_broker_host, settings.embedded_broker_port, "the embedded MQTT broker"
        )
        settings = settings.model_copy(update={"embedded_broker_port": broker_port})
    port = _port(settings.http_host, port, "the web API")
    app = create_app(settings)
    server = http_server(app, settings.http_host, port)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1
        await asyncio.sleep(0.05)
    controller: Controller = app.state.controller
    simulator = None
    try:
        simulator = await _start_simulated_county(controller, region, per_village, playback)
        if simulator is None:
            return 1
        _print_banner(settings, controller, port, region)
        await serving
    finally:
        if not serving.done():
            server.should_exit = True
            await asyncio.wait([serving])
        if simulator is not None and simulator.returncode is None:
            simulator.terminate()
            await simulator.wait()
    return 0


async def _start_simulated_county(
    controller: Controller, region: str, per_village: int, playback: float | None
) -> asyncio.subprocess.Process | None:
    villages = await controller.writer.call(lambda session: villages_under(session, region))
    if not villages:
        print(f"no villages under region {region}", file=sys.stderr)
        return None
    specs = fleet_for_villages([v.code for v in villages], per_village)
    await controller.register([TerminalSpec(id=s.terminal_id, region=s.region) for s in specs])
    assert controller.bus is not None
    broker = f"mqtt://{controller.bus.address.host}:{controller.bus.address.port}"
    command = ["-m", "deploy.cli", "simulate", "--broker", broker, "--region", region]
    command += ["--per-village", str(per_village)]
    if playback is not None:
        command += ["--playback", str(playback)]
    # Its own process, so the simulated county runs on another core than the controller.
    simulator = await asyncio.create_subprocess_exec(sys.executable, *command)
    print(
        f"starting {len(specs)} simulated terminals in {len(villages)} villages under {region}…", flush=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and simulator.returncode is None:
        online = sum(1 for s in specs if controller.presence_of(s.terminal_id) == "online")
        if online == len(specs):
            break
        await asyncio.sleep(0.5)
    return simulator


def _print_banner(settings: Settings, controller: Controller, port: int, region: str) -> None:
    assert controller.bus is not None
    base = f"http://{settings.http_host}:{port}"
    broker = "embedded amqtt broker" if settings.mqtt_url is None else "configured broker"
    body = (
        '{"kind":"emergency","level":4,"regions":["' + region + '"],'
        '"text":"这是一次应急广播系统测试，请勿惊慌。","expires_in":600}'
    )
    print(
        f"""
Cunxiang (村响) demo is running.
  API docs   {base}/docs
  MQTT       {controller.bus.address} ({broker})
  Database   {settings.database_url}

Send a test alert (level IV emergency) to every terminal in {region}:
  curl -s -X POST {base}/api/v1/broadcasts -H 'content-type: application/json' -d '{body}'
Then follow it (use the "id" from the answer):
  curl -s {base}/api/v1/broadcasts/<id>
Terminals and their presence:
  curl -s '{base}/api/v1/terminals?limit=5'
Press Ctrl-C to stop.
""",
        flush=True,
    )
