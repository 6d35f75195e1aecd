"""Publishes terminals' births and heartbeats, for `cunxiang bench heartbeats` (not a public command).

    python -m bench.heartbeat_publisher --broker mqtt://HOST:PORT --prefix P --ids-file FILE
                                        --report FILE births
    python -m bench.heartbeat_publisher --broker mqtt://HOST:PORT --prefix P --ids-file FILE
                                        --report FILE heartbeats --total H --slice I/K
                                        [--fault-share F] [--rate R] [--ready-file F --go-file F]

FILE is a JSON list of [terminal id, region code]. `births` publishes each terminal's retained `online` status
(session 1, heartbeat every 30 s), QoS 1, as a terminal does when it connects, and exits once the
broker has acknowledged them all. `heartbeats` builds and encodes its share of the benchmark's H
heartbeats before the first publish (heartbeat i of the plan is from terminal i mod N, so every
terminal beats once before any beats twice; this process sends those with i mod K = I), with the
telemetry of `simulator.terminal`, then publishes them QoS 0 on the terminals' heartbeat topics, as
terminals do, over one paho-mqtt connection: as fast as it can, or R a second with --rate.

With --fault-share F, a share F of the H heartbeats each report one fault (speaker open circuit,
amplifier fault, on battery, weak signal or heat, in turn) that the same terminal's next heartbeat
reports gone: each such pair should cost the controller one alarm INSERT and one UPDATE.

It writes to --report: when it started and finished publishing and when the last one had gone
out (epoch seconds), how many it published, and its CPU time.
"""

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.publisher import flood
from devices.messages import (
    Amplifier,
    Heartbeat,
    Presence,
    Speaker,
    Supply,
    TerminalStatus,
    encode,
    now_utc,
)
from devices.topics import TopicScheme

HEARTBEAT_INTERVAL_S = 30
FIRMWARE = "sim-1.0.0"
FAULTS = ("speaker", "amplifier", "battery", "signal", "temperature")
MAX_FAULT_SHARE = 0.25


@dataclass(frozen=True)
class Beat:
    """One planned heartbeat: from which terminal, its round (0 for a terminal's first), and the
    fault it reports (one of FAULTS), if any."""

    terminal: int
    round: int
    fault: str | None = None


def fault_indices(terminals: int, total: int, share: float, seed: int = 0) -> set[int]:
    """Which of the `total` heartbeats report a fault, so that a share `share` of them do and the
    same terminal's next heartbeat (index + `terminals`) reports it gone.

    Faults are only put in even rounds whose terminal has a next heartbeat, so a clearing heartbeat
    never reports a fault itself. Raises ValueError if there are not enough such heartbeats.
    """
    if not 0 <= share <= MAX_FAULT_SHARE:
        raise ValueError(f"the fault share must be between 0 and {MAX_FAULT_SHARE}")
    wanted = round(share * total)
    if wanted == 0:
        return set()
    eligible = [i for i in range(total - terminals) if (i // terminals) % 2 == 0]
    if len(eligible) < wanted:
        raise ValueError(
            f"{total} heartbeats over {terminals} terminals leave room for {len(eligible)} faults "
            f"that clear, not {wanted}: send more heartbeats per terminal"
        )
    return set(random.Random(seed).sample(eligible, wanted))


def plan(terminals: int, total: int, share: float = 0.0, seed: int = 0) -> list[Beat]:
    """The benchmark's heartbeats in publishing order: heartbeat i is from terminal i mod N."""
    if terminals < 1 or total < 0:
        raise ValueError("need at least one terminal and no negative number of heartbeats")
    faulty = sorted(fault_indices(terminals, total, share, seed))
    kinds = {index: FAULTS[k % len(FAULTS)] for k, index in enumerate(faulty)}
    return [Beat(i % terminals, i // terminals, kinds.get(i)) for i in range(total)]


def heartbeat(terminal_id: str, beat: Beat, rng: random.Random) -> Heartbeat:
    """The heartbeat a simulated terminal (`simulator.terminal`) would send, with `beat.fault`."""
    fault = beat.fault
    return Heartbeat(
        terminal_id=terminal_id,
        at=now_utc(),
        uptime_s=600 + HEARTBEAT_INTERVAL_S * beat.round,
        volume=80,
        amplifier=Amplifier.FAULT if fault == "amplifier" else Amplifier.OK,
        speaker=Speaker.OPEN_CIRCUIT if fault == "speaker" else Speaker.OK,
        supply=Supply.BATTERY if fault == "battery" else Supply.MAINS,
        battery_pct=80 if fault == "battery" else None,
        temperature_c=75.0 if fault == "temperature" else round(rng.uniform(15, 35), 1),
        signal_dbm=-110 if fault == "signal" else rng.randint(-95, -60),
        firmware=FIRMWARE,
    )


def birth(terminal_id: str, region: str) -> TerminalStatus:
    """A terminal's retained `online` status, announcing heartbeats every 30 s."""
    return TerminalStatus(
        terminal_id=terminal_id,
        state=Presence.ONLINE,
        session=1,
        region=region,
        firmware=FIRMWARE,
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        at=now_utc(),
    )


def build_heartbeats(
    prefix: str, ids: list[str], total: int, share: float, index: int, of: int
) -> list[tuple[str, bytes]]:
    """(topic, payload) of this publisher's share (i mod `of` = `index`) of the plan."""
    topics = TopicScheme(prefix)
    rng = random.Random(index)
    beats = plan(len(ids), total, share)[index::of]
    return [
        (topics.terminal_heartbeat(ids[b.terminal]), encode(heartbeat(ids[b.terminal], b, rng)))
        for b in beats
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heartbeat_publisher", description=__doc__)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--ids-file", type=Path, required=True, help="JSON list of [id, region]")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--client-id", default="bench-heartbeats")
    parser.add_argument("--ready-file", type=Path, default=None, help="touched once built and connected")
    parser.add_argument("--go-file", type=Path, default=None)
    what = parser.add_subparsers(dest="what", required=True)
    what.add_parser("births")
    beats = what.add_parser("heartbeats")
    beats.add_argument("--total", type=int, required=True, help="heartbeats in the whole plan")
    beats.add_argument("--slice", default="0/1", help="I/K: publish the plan's heartbeats i with i mod K = I")
    beats.add_argument("--fault-share", type=float, default=0.0)
    beats.add_argument("--rate", type=float, default=0.0, help="heartbeats a second (0: as fast as possible)")
    args = parser.parse_args(argv)

    fleet: list[list[str]] = json.loads(args.ids_file.read_text(encoding="utf-8"))
    qos, rate = 0, 0.0
    if args.what == "births":
        topics = TopicScheme(args.prefix)
        messages = [(topics.terminal_status(t), encode(birth(t, region))) for t, region in fleet]
        qos = 1
    else:
        index, of = (int(part) for part in args.slice.split("/"))
        ids = [t for t, _region in fleet]
        messages = build_heartbeats(args.prefix, ids, args.total, args.fault_share, index, of)
        rate = args.rate
    started, published, done, sent = flood(
        args.broker,
        args.client_id,
        messages,
        qos=qos,
        retain=qos == 1,
        rate=rate,
        ready_file=args.ready_file,
        go_file=args.go_file,
    )
    args.report.write_text(
        json.dumps(
            {
                "started": started,
                "published": published,
                "sent": done,
                "messages": len(messages),
                "confirmed": sent,
                "cpu_s": time.process_time(),
            }
        ),
        encoding="utf-8",
    )
    return 0 if sent == len(messages) else 1


if __name__ == "__main__":
    sys.exit(main())
