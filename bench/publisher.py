"""Floods a controller with valid acknowledgements, for `cunxiang bench ingest` (not a public command).

    python -m bench.publisher --broker mqtt://HOST:PORT --prefix P --command ID --ids-file FILE
                              --report FILE [--ready-file FILE --go-file FILE]

FILE is a JSON list of terminal ids. Every acknowledgement is built and encoded before the first
publish, exactly as a terminal's `TerminalCore` would send it: `received`, then `playing`, then
`completed` for every terminal (all `received` first, as when a county's terminals take a command
at once and play it for the same time), each on the terminal's own ack topic, QoS 1, over one
paho-mqtt connection. With --go-file it waits until that file exists before publishing. It writes
to --report: when it started and finished publishing and when the broker had acknowledged the last
one (epoch seconds), and how many it published.
"""

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.broker import BrokerAddress
from devices.messages import Ack, AckStage, encode, now_utc
from devices.topics import TopicScheme

STAGES = (AckStage.RECEIVED, AckStage.PLAYING, AckStage.COMPLETED)


def build(prefix: str, command_id: str, terminal_ids: list[str]) -> list[tuple[str, bytes]]:
    """(topic, payload) of every acknowledgement, stage by stage."""
    topics = TopicScheme(prefix)
    start = now_utc()
    messages = []
    for offset, stage in enumerate(STAGES):
        at = start + timedelta(seconds=offset)
        for terminal_id in terminal_ids:
            ack = Ack(command_id=command_id, terminal_id=terminal_id, stage=stage, at=at)
            messages.append((topics.terminal_ack(terminal_id), encode(ack)))
    return messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publisher", description=__doc__)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--ids-file", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--go-file", type=Path, default=None)
    parser.add_argument("--ready-file", type=Path, default=None, help="touched once built and connected")
    parser.add_argument("--client-id", default="bench-publisher")
    args = parser.parse_args(argv)

    messages = build(args.prefix, args.command, json.loads(args.ids_file.read_text(encoding="utf-8")))
    started, published, done, acked = flood(
        args.broker, args.client_id, messages, qos=1, ready_file=args.ready_file, go_file=args.go_file
    )
    args.report.write_text(
        json.dumps(
            {
                "started": started,
                "published": published,
                "acked": done,
                "messages": len(messages),
                "pubacks": acked,
                "cpu_s": time.process_time(),
            }
        ),
        encoding="utf-8",
    )
    return 0 if acked == len(messages) else 1


def flood(
    broker: str,
    client_id: str,
    messages: list[tuple[str, bytes]],
    *,
    qos: int,
    retain: bool = False,
    rate: float = 0.0,
    ready_file: Path | None = None,
    go_file: Path | None = None,
) -> tuple[float, float, float, int]:
    """Publish `messages` on one paho connection as fast as it goes (or `rate` a second), once
    `go_file` exists (after touching `ready_file`); wait up to 120 s for them all to be confirmed
    (QoS 1: the broker's PUBACK; QoS 0: written to the socket). Returns the wall-clock times of
    the first publish, the last publish and the last confirmation, and how many were confirmed."""
    address = BrokerAddress.from_url(broker)
    confirmed = 0

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        nonlocal confirmed
        confirmed += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(0)  # unlimited: the broker's PUBACKs never hold the flood back
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(address.host, address.port, keepalive=60)
    while not client.is_connected():
        client.loop(0.1)
    if ready_file is not None:
        ready_file.touch()
    if go_file is not None:
        while not go_file.exists():
            client.loop(0.01)
    started = time.time()
    for i, (topic, payload) in enumerate(messages):
        client.publish(topic, payload, qos=qos, retain=retain)
        if rate > 0:
            while time.time() < started + (i + 1) / rate:
                client.loop(0.001)
        elif i % 200 == 199:
            client.loop(0)
    published = time.time()
    deadline = time.monotonic() + 120
    while confirmed < len(messages) and time.monotonic() < deadline:
        client.loop(0.01)
    done = time.time()
    client.disconnect()
    return started, published, done, confirmed


if __name__ == "__main__":
    sys.exit(main())
