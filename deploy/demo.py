"""`cunxiang demo`: the whole system on one machine, with a simulated county, in one command."""

import asyncio
import logging
import secrets
import sys
import time

from sqlmodel import Session

from api.app import create_app
from controller.accounts import (
    AccountNotFound,
    NewAccount,
    Role,
    account_named,
    create_account,
    hash_password,
)
from controller.audit import AuditEntry, append
from controller.embedded_broker import free_port, port_is_free
from controller.regions import villages_under
from controller.service import Controller
from controller.settings import Settings
from controller.terminals import TerminalSpec
from deploy.serve import http_server
from devices.messages import now_utc
from simulator.fleet import fleet_for_villages

log = logging.getLogger(__name__)

DEMO_ADMIN = "demo-admin"


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
        password = await _demo_admin(controller)
        _print_banner(settings, controller, port, region, password)
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
    await controller.register([TerminalSpec.model_validate(s.registration()) for s in specs])
    assert controller.bus is not None
    broker = f"mqtt://{controller.bus.address.host}:{controller.bus.address.port}"
    command = ["-m", "deploy.cli", "simulate", "--broker", broker, "--region", region]
    command += ["--per-village", str(per_village), "--keys", str(controller.keys.keyset_path)]
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


async def _demo_admin(controller: Controller) -> str:
    """The demo administrator, with a fresh random password each run (never a default one)."""
    password = secrets.token_urlsafe(12)
    password_hash = await asyncio.to_thread(hash_password, password)
    county = controller.settings.county_region

    def store(session: Session) -> None:
        now = now_utc()
        try:
            account = account_named(session, DEMO_ADMIN)
        except AccountNotFound:
            new = NewAccount(username=DEMO_ADMIN, role=Role.ADMIN, region=county, password=password)
            create_account(session, new, password_hash, "demo", now)
        else:
            account.password_hash, account.token_version = password_hash, account.token_version + 1
            session.add(account)
        entry = AuditEntry(actor="demo", source="cli", action="account.password", object_id=DEMO_ADMIN)
        append(session, entry, now)
        session.commit()

    await controller.writer.call(store)
    return password


def _print_banner(settings: Settings, controller: Controller, port: int, region: str, password: str) -> None:
    assert controller.bus is not None
    base = f"http://{settings.http_host}:{port}"
    broker = "embedded amqtt broker" if settings.mqtt_url is None else "configured broker"
    body = (
        '{"kind":"emergency","level":4,"status":"exercise","regions":["' + region + '"],'
        '"text":"这是一次应急广播系统演练，请勿惊慌。","expires_in":600}'
    )
    token = (
        f"TOKEN=$(curl -s {base}/api/v1/auth/token -d username={DEMO_ADMIN} -d password='{password}' "
        """| python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"""
    )
    print(
        f"""
Cunxiang (村响) demo is running.
  API docs   {base}/docs
  MQTT       {controller.bus.address} ({broker})
  Database   {settings.database_url}
  Sign in    username {DEMO_ADMIN}  password {password}  (admin of {settings.county_region}; new each run)

Sign in from a shell:
  {token}
Send an exercise alert (level IV, announced as a drill) to every terminal in {region}:
  curl -s -X POST {base}/api/v1/broadcasts -H "Authorization: Bearer $TOKEN" \\
       -H 'content-type: application/json' -d '{body}'
Then follow it (use the "id" from the answer):
  curl -s -H "Authorization: Bearer $TOKEN" {base}/api/v1/broadcasts/<id>
Terminals and their presence:
  curl -s -H "Authorization: Bearer $TOKEN" '{base}/api/v1/terminals?limit=5'
Press Ctrl-C to stop.
""",
        flush=True,
    )
