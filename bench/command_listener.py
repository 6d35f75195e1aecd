"""Notes when each region command arrives, for `cunxiang bench schedules` (not a public command).

    python -m bench.command_listener --broker mqtt://HOST:PORT --prefix P --out FILE --ready-file FILE

One paho-mqtt connection (clean session) subscribed to `<prefix>/v1/region/+/cmd` at QoS 1, as a
terminal would be to its region's topic. For every message it appends one JSON line to --out, at
once (line-buffered): `at` (epoch s, when paho handed the message over), `topic`, `id` and
`issued_at` from the command, and `dup` (the broker's duplicate flag). It touches --ready-file once
the broker has acknowledged the subscription, and stops on SIGTERM or SIGINT.
"""

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.broker import BrokerAddress
from devices.topics import TopicScheme


def record(payload: bytes, topic: str, at: float, dup: bool) -> dict[str, Any]:
    """The line written for one message; a payload that is not a command's JSON keeps its size only."""
    line: dict[str, Any] = {"at": at, "topic": topic, "dup": dup}
    try:
        command = json.loads(payload)
        line["id"], line["issued_at"] = command.get("id"), command.get("issued_at")
    except (ValueError, AttributeError):
        line["bad_payload"] = len(payload)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.command_listener", description=__doc__)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--client-id", default="bench-command-listener")
    args = parser.parse_args(argv)

    address = BrokerAddress.from_url(args.broker)
    pattern = f"{TopicScheme(args.prefix).root}/region/+/cmd"
    out = args.out.open("a", encoding="utf-8", buffering=1)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=True)

    def connected(c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe(pattern, qos=1)

    def subscribed(_c: mqtt.Client, _u: Any, _mid: int, _reasons: Any, _p: Any) -> None:
        args.ready_file.touch()

    def message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.time()
        out.write(json.dumps(record(bytes(msg.payload), msg.topic, at, bool(msg.dup))) + "\n")

    client.on_connect = connected
    client.on_subscribe = subscribed
    client.on_message = message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    signal.signal(signal.SIGINT, lambda *_: client.disconnect())
    client.connect(address.host, address.port, keepalive=30)
    client.loop_forever(retry_first_connection=True)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
