"""Simulated terminals for the fanout benchmark, in a process of their own (not a public command).

    python -m bench.terminals --broker mqtt://HOST:PORT --prefix P --ids-file FILE --playback S

FILE is a JSON list of {"id": ..., "region": ...}. The terminals run until SIGTERM or SIGINT, then
say goodbye and exit. Exit status 1 if they could not all connect within --connect-timeout.

`--impl lean` (the default) runs them as `bench.lean` terminals: one MQTT connection per terminal,
all served by one selector loop. `--impl aiomqtt` runs `simulator.runner.Fleet`, the simulator of
`cunxiang simulate` (one aiomqtt client and asyncio tasks per terminal), which costs about three
times the CPU per acknowledgement. Both speak protocol v1 and decide with `TerminalCore`.

With --times-file, each terminal notes the wall-clock time (epoch seconds) at which it took its
first command off its MQTT connection, and the process writes them as {terminal id: time} on exit:
that splits the benchmark's latency into getting the command out and getting the ack back.
"""

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.lean import LeanFleet, share_command_decoding, share_command_verification
from devices.broker import BrokerAddress
from devices.signing import KeySet
from devices.topics import TopicScheme
from simulator.fleet import Behaviour, SimulatedSpec
from simulator.runner import Fleet

log = logging.getLogger("bench.terminals")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.terminals", description=__doc__)
    parser.add_argument("--broker", required=True, help="mqtt://host:port")
    parser.add_argument("--prefix", required=True, help="topic prefix of the controller")
    parser.add_argument("--ids-file", type=Path, required=True)
    parser.add_argument("--playback", type=float, default=1.0)
    parser.add_argument("--heartbeat", type=int, default=300, help="heartbeat interval (s)")
    parser.add_argument("--connect-timeout", type=float, default=300.0)
    parser.add_argument("--times-file", type=Path, default=None)
    parser.add_argument("--impl", choices=("lean", "aiomqtt"), default="lean")
    parser.add_argument("--keys", type=Path, required=True, help="the controller's keyset.json")
    return parser.parse_args(argv)


def read_keys(path: Path) -> KeySet:
    return KeySet.model_validate_json(path.read_text(encoding="utf-8"))


def read_specs(path: Path) -> list[SimulatedSpec]:
    entries = json.loads(path.read_text(encoding="utf-8"))
    return [SimulatedSpec(entry["id"], entry["region"]) for entry in entries]


def note_first_commands(fleet: Fleet, times: dict[str, float]) -> None:
    """Make each terminal note when it took its first command (wraps its core's on_payload)."""
    for terminal in fleet.terminals:
        original = terminal.core.on_payload

        def on_payload(
            payload: bytes, now: Any, _original: Any = original, _id: str = terminal.spec.terminal_id
        ) -> Any:
            times.setdefault(_id, time.time())
            return _original(payload, now)

        terminal.core.on_payload = on_payload  # type: ignore[method-assign]


def run_lean(args: argparse.Namespace) -> int:
    specs = read_specs(args.ids_file)
    address = BrokerAddress.from_url(args.broker)
    times: dict[str, float] = {}
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)

    def noted(terminal_id: str) -> None:
        if terminal_id not in times:
            times[terminal_id] = time.time()

    share_command_decoding()
    share_command_verification()
    fleet = LeanFleet(
        specs,
        address.host,
        address.port,
        TopicScheme(args.prefix),
        Behaviour(playback_s=args.playback, heartbeat_interval_s=args.heartbeat),
        read_keys(args.keys),
        on_first_command=noted,
    )
    try:
        if not fleet.start(args.connect_timeout, lambda: stopping):
            if stopping:
                return 0
            print(
                f"bench.terminals: only {fleet.online} of {len(specs)} terminals connected to "
                f"{address} within {args.connect_timeout:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            return 1
        fleet.run_until(lambda: stopping)
        if args.times_file is not None:
            args.times_file.write_text(json.dumps(times), encoding="utf-8")
        return 0
    finally:
        fleet.stop()


async def run_aiomqtt(args: argparse.Namespace) -> int:
    specs = read_specs(args.ids_file)
    address = BrokerAddress.from_url(args.broker)
    fleet = Fleet(
        specs,
        address.host,
        address.port,
        read_keys(args.keys),
        TopicScheme(args.prefix),
        Behaviour(playback_s=args.playback, heartbeat_interval_s=args.heartbeat),
    )
    times: dict[str, float] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.create_task(fleet.start(timeout=args.connect_timeout))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            try:
                starting.result()
            except TimeoutError:
                online = sum(1 for t in fleet.terminals if t.connected.is_set())
                print(
                    f"bench.terminals: only {online} of {len(specs)} terminals connected to "
                    f"{address} within {args.connect_timeout:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            note_first_commands(fleet, times)
            await stop.wait()
            if args.times_file is not None:
                args.times_file.write_text(json.dumps(times), encoding="utf-8")
        else:
            starting.cancel()
        stopping.cancel()
        return 0
    finally:
        await fleet.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.impl == "lean":
        return run_lean(args)
    return asyncio.run(run_aiomqtt(args))


if __name__ == "__main__":
    sys.exit(main())
