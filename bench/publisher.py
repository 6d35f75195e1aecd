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

from controller.bus import BrokerAddress
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
    address = BrokerAddress.from_url(args.broker)
    acked = 0

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        nonlocal acked
        acked += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(0)  # unlimited: the broker's PUBACKs never hold the flood back
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(address.host, address.port, keepalive=60)
    while not client.is_connected():
        client.loop(0.1)
    if args.ready_file is not None:
        args.ready_file.touch()
    if args.go_file is not None:
        while not args.go_file.exists():
            client.loop(0.01)
    started = time.time()
    for i, (topic, payload) in enumerate(messages):
        client.publish(topic, payload, qos=1)
        if i % 200 == 199:
            client.loop(0)
    published = time.time()
    deadline = time.monotonic() + 120
    while acked < len(messages) and time.monotonic() < deadline:
        client.loop(0.01)
    done = time.time()
    client.disconnect()
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


if __name__ == "__main__":
    sys.exit(main())
