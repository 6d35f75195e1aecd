"""The controller's MQTT client and the packet codec it shares with the bench's terminals: packets
cut from reads of any size, messages handed on in order, their PUBACKs after them in one write,
and a real broker (Mosquitto, when installed) on the other end."""

import asyncio
import shutil

import pytest

from controller.bus import _Inbox
from controller.embedded_broker import free_port
from controller.mqtt_client import READ_SIZE, MqttConnection, MqttError, connect
from devices import mqtt_wire
from devices.mqtt_wire import MalformedPacket, Will


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def feed(connection: MqttConnection, data: bytes, chunk: int) -> None:
    """Deliver `data` as the event loop would, at most `chunk` bytes per read."""
    while data:
        view = connection.get_buffer(-1)
        size = min(chunk, len(view), len(data))
        view[:size] = data[:size]
        connection.buffer_updated(size)
        data = data[size:]


def opened() -> tuple[MqttConnection, FakeTransport, list[tuple[str, bytes]]]:
    seen: list[tuple[str, bytes]] = []
    connection = MqttConnection(lambda t, p: seen.append((t, p)), keepalive=0, max_inflight=10)
    transport = FakeTransport()
    connection.connection_made(transport)
    return connection, transport, seen


def test_split_leaves_an_incomplete_packet_for_the_next_read() -> None:
    big = mqtt_wire.publish_packet("a/b", b"x" * 300, qos=1, packet_id=7)  # two length bytes
    data = mqtt_wire.puback_packet(1) + big
    assert mqtt_wire.split(data[:-1]) == ([(mqtt_wire.PUBACK, 0, b"\x00\x01")], 4)
    packets, used = mqtt_wire.split(data)
    assert used == len(data) and [kind for kind, _f, _b in packets] == [mqtt_wire.PUBACK, mqtt_wire.PUBLISH]
    message = mqtt_wire.read_publish(packets[1][1], packets[1][2])
    assert (message.topic, message.payload, message.qos, message.packet_id) == ("a/b", b"x" * 300, 1, 7)


def test_split_refuses_a_remaining_length_of_five_bytes() -> None:
    with pytest.raises(MalformedPacket):
        mqtt_wire.split(b"\x30\xff\xff\xff\xff\x01")


def test_connect_packet_carries_the_will_and_the_credentials() -> None:
    packet = mqtt_wire.connect_packet(
        "ctl", keepalive=30, clean_session=False, will=Will("s", b"lost"), username="u", password="p"
    )
    [(kind, _flags, body)], _used = mqtt_wire.split(packet)
    assert kind == mqtt_wire.CONNECT
    assert body[:7] == b"\x00\x04MQTT\x04" and body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04
    assert body[8:10] == (30).to_bytes(2, "big")
    assert body[10:] == b"\x00\x03ctl\x00\x01s\x00\x04lost\x00\x01u\x00\x01p"


@pytest.mark.parametrize("chunk", [1, 7, 64, READ_SIZE])
async def test_messages_are_handed_on_in_order_and_acknowledged_in_one_write_per_read(chunk: int) -> None:
    connection, transport, seen = opened()
    stream = b"".join(
        mqtt_wire.publish_packet(f"cx/v1/terminal/t{i}/ack", b"{%d}" % i, qos=1, packet_id=i + 1)
        for i in range(50)
    ) + mqtt_wire.publish_packet("cx/v1/terminal/t/heartbeat", b"hb", qos=0)
    feed(connection, stream, chunk)
    assert seen == [(f"cx/v1/terminal/t{i}/ack", b"{%d}" % i) for i in range(50)] + [
        ("cx/v1/terminal/t/heartbeat", b"hb")
    ]
    assert b"".join(transport.written) == b"".join(mqtt_wire.puback_packet(i + 1) for i in range(50))
    if chunk == READ_SIZE:
        assert len(transport.written) == 1


async def test_a_failing_handler_costs_its_message_not_the_connection() -> None:
    def fail(_topic: str, _payload: bytes) -> None:
        raise RuntimeError("a defect of ours")

    connection = MqttConnection(fail, keepalive=0, max_inflight=10)
    transport = FakeTransport()
    connection.connection_made(transport)
    feed(connection, mqtt_wire.publish_packet("a", b"x", qos=1, packet_id=3), READ_SIZE)
    assert transport.written == [mqtt_wire.puback_packet(3)] and connection.error is None


async def test_a_publish_waits_for_its_puback_and_fails_when_the_connection_is_lost() -> None:
    connection, transport, _seen = opened()
    first = asyncio.create_task(connection.publish("t", b"1", qos=1))
    second = asyncio.create_task(connection.publish("t", b"2", qos=1))
    await asyncio.sleep(0)
    assert transport.written == [
        mqtt_wire.publish_packet("t", b"1", qos=1, packet_id=1),
        mqtt_wire.publish_packet("t", b"2", qos=1, packet_id=2),
    ]
    feed(connection, mqtt_wire.puback_packet(1), READ_SIZE)
    await first
    connection.connection_lost(ConnectionResetError("reset"))
    with pytest.raises(MqttError, match="connection lost"):
        await second
    with pytest.raises(MqttError):
        await connection.wait_closed()


async def test_a_publish_without_puback_times_out() -> None:
    connection, _transport, _seen = opened()
    with pytest.raises(MqttError, match="no PUBACK"):
        await connection.publish("t", b"1", qos=1, timeout=0.05)


def test_inbox_holds_messages_until_the_bus_is_connected_then_hands_them_over_in_order() -> None:
    seen: list[tuple[str, bytes]] = []
    inbox = _Inbox(lambda topic, payload: seen.append((topic, payload)))
    inbox.put("cx/v1/terminal/a/status", b"1")
    assert seen == []
    inbox.open()
    inbox.put("cx/v1/terminal/a/ack", b"2")
    assert seen == [("cx/v1/terminal/a/status", b"1"), ("cx/v1/terminal/a/ack", b"2")]


def test_inbox_keeps_a_failing_handler_out_of_the_read_loop() -> None:
    def fail(_topic: str, _payload: bytes) -> None:
        raise RuntimeError("a defect of ours")

    inbox = _Inbox(fail)
    inbox.open()
    inbox.put("cx/v1/terminal/a/ack", b"x")


MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
async def test_against_mosquitto_subscribe_publish_receive_and_the_will() -> None:
    assert MOSQUITTO is not None
    port = free_port()
    broker = await asyncio.create_subprocess_exec(
        MOSQUITTO, "-p", str(port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        got: list[tuple[str, bytes]] = []
        for _ in range(50):
            try:
                watcher = await connect(
                    "127.0.0.1", port, client_id="watcher", on_message=lambda t, p: got.append((t, p))
                )
                break
            except MqttError:
                await asyncio.sleep(0.1)
        await watcher.subscribe("cx/#")
        sender = await connect(
            "127.0.0.1",
            port,
            client_id="sender",
            on_message=lambda t, p: None,
            will=Will("cx/status", b"lost"),
            keepalive=5,
        )
        await asyncio.gather(*(sender.publish(f"cx/{i}", b"%d" % i, qos=1) for i in range(500)))
        await sender.publish("cx/q0", b"fire and forget", qos=0)
        sender._fail(MqttError("pulled the plug"))  # no DISCONNECT: the broker publishes the will
        numbered = [(f"cx/{i}", b"%d" % i) for i in range(500)]
        for _ in range(100):
            if ("cx/status", b"lost") in got and len([m for m in got if m in numbered]) == 500:
                break
            await asyncio.sleep(0.05)
        # In order among themselves; MQTT does not order them against the QoS 0 message or the will
        # (Mosquitto may send a QoS 0 message ahead of QoS 1 ones waiting for its in-flight window).
        assert [m for m in got if m in numbered] == numbered
        assert ("cx/q0", b"fire and forget") in got and ("cx/status", b"lost") in got
        with pytest.raises(MqttError, match="refused the connection"):
            await connect("127.0.0.1", port, client_id="", on_message=lambda t, p: None, clean_session=False)
        watcher.disconnect()
        with pytest.raises(MqttError):
            await watcher.wait_closed()
    finally:
        broker.terminate()
        await broker.wait()
