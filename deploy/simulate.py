"""`cunxiang simulate`: terminals for every village under a region, until interrupted."""

import argparse
import asyncio
import logging
import signal
import sys

import httpx

from controller.regions import bundled_divisions, parse_divisions
from controller.settings import Settings
from controller.signing_keys import KEYSET_FILE
from devices.broker import BrokerAddress
from devices.identifiers import RegionLevel
from devices.signing import KeySet
from simulator.fleet import Behaviour, SimulatedSpec, fleet_for_villages
from simulator.runner import Fleet
from simulator.scenario import ScenarioError, load_scenario

log = logging.getLogger(__name__)


def villages_in(divisions_csv: str, region: str) -> list[str]:
    return [
        r.code
        for r in parse_divisions(divisions_csv)
        if r.level == RegionLevel.VILLAGE and r.code.startswith(region)
    ]


def register_over_http(api: str, api_key: str | None, specs: list[SimulatedSpec]) -> None:
    if not api_key:
        raise SystemExit("registering needs an administrator's API key: --api-key or CUNXIANG_API_KEY")
    body = [s.registration() for s in specs]
    headers = {"X-API-Key": api_key}
    response = httpx.post(f"{api.rstrip('/')}/api/v1/terminals", json=body, headers=headers, timeout=60)
    response.raise_for_status()
    log.info("registered with %s: %s", api, response.json())


async def run_simulator(settings: Settings, args: argparse.Namespace) -> int:
    url = args.broker or settings.mqtt_url
    if url is None:
        print("no broker: give --broker mqtt://host:port or set CUNXIANG_MQTT_URL", file=sys.stderr)
        return 2
    divisions = args.divisions.read_text(encoding="utf-8") if args.divisions else bundled_divisions()
    villages = villages_in(divisions, args.region)
    if not villages:
        print(f"no villages under region {args.region}", file=sys.stderr)
        return 2
    specs = fleet_for_villages(villages, args.per_village)
    if args.register:
        await asyncio.to_thread(register_over_http, args.register, args.api_key, specs)
    try:
        address = BrokerAddress.from_url(
            url,
            ca_file=args.ca_file or settings.mqtt_ca_file,
            cert_file=args.cert_file or settings.mqtt_cert_file,
            key_file=args.key_file or settings.mqtt_key_file,
        )
    except (ValueError, OSError) as exc:
        print(f"bad broker {url}: {exc}", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario) if args.scenario else None
    except ScenarioError as exc:
        print(f"bad scenario: {exc}", file=sys.stderr)
        return 2
    keyset_path = args.keys or settings.signing_key_dir / KEYSET_FILE
    try:
        keys = KeySet.model_validate_json(keyset_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"cannot read the controller's public keys from {keyset_path}: {exc}", file=sys.stderr)
        return 2
    fleet = Fleet(
        specs,
        address.host,
        address.port,
        keys,
        settings.topics,
        Behaviour(playback_s=args.playback),
        scenario=scenario,
        tls=address.tls,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fleet:
        print(
            f"{len(specs)} simulated terminals online in {len(villages)} villages under {args.region}",
            flush=True,
        )
        await stop.wait()
    return 0
