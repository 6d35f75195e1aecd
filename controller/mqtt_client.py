"""One MQTT 3.1.1 connection on asyncio: the controller's client, used by `controller.bus` only.

Why not aiomqtt on paho-mqtt (which the controller used before): receiving is the controller's hot
path, a county's acknowledgements arriving at once, and paho-mqtt costs about 40 µs of CPU per
incoming QoS 1 PUBLISH (it reads a packet's header a byte per system call, builds an
`MQTTMessage`, dispatches callbacks, and sends each PUBACK with its own system call), half of what
the controller spent per acknowledgement (docs/performance.md). Here an asyncio `BufferedProtocol`
reads up to `READ_SIZE` bytes at a time, `devices.mqtt_wire.split` cuts them into packets, each
PUBLISH goes to `on_message(topic, payload)` as it is read, and the PUBACKs of one read leave in
one write, after their messages were handed on, as paho did one by one. Same packets on the wire.

The client speaks what the controller needs and nothing more: CONNECT with a will, user name and
password, over TCP or TLS; PUBLISH at QoS 0 and 1 out, waiting for the PUBACK, at most
`max_inflight` unacknowledged at once; SUBSCRIBE, waiting for the SUBACK; PUBLISH at QoS 0 and 1
in (every subscription is QoS 1); keepalive pings; DISCONNECT. A session (`clean_session` false)
is the broker's: messages queued for the controller while it was away arrive after CONNACK;
publishes not acknowledged when a connection drops fail with `MqttError` (the caller sends again,
as with aiomqtt, whose client does not outlive its connection either).

Errors, flat: `MqttError` (with `reason`) for anything that ends or refuses a connection or an
operation: refused CONNACK, refused SUBSCRIBE, timeout, connection lost, malformed packet.
"""

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from devices import mqtt_wire
from devices.mqtt_wire import MalformedPacket, Will
from devices.mqtt_wire import publish_packet as publish

log = logging.getLogger(__name__)

READ_SIZE = 16384
"""bytes read from the socket at most per readiness event (about a hundred acknowledgements), so
one read never holds the event loop for long: the database writer's next batch waits for the
loop's turns (with 64 KB, a turn took up to 10 ms on an idle core, and the writer several turns)"""

OnMessage = Callable[[str, bytes], None]


class MqttError(Exception):
    """A connection or an operation on it failed; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MqttConnection(asyncio.BufferedProtocol):
    """One connection to the broker, from `connect` until `closed` (see the module docstring)."""

    def __init__(self, on_message: OnMessage, *, keepalive: int, max_inflight: int) -> None:
        self._on_message = on_message
        self._keepalive = keepalive
        self._buffer = bytearray(2 * READ_SIZE)
        self._filled = 0
        self._transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[int] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._last_id = 0
        self._slots = asyncio.Semaphore(max_inflight)
        self._last_out = time.monotonic()
        self._ping_sent: float | None = None
        self._pinger: asyncio.Task[None] | None = None
        self.error: MqttError | None = None

    # --- asyncio protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._buffer) - self._filled < READ_SIZE:
            # Only here, never while the transport holds a view of it, may the buffer grow.
            self._buffer.extend(bytes(READ_SIZE))
        return memoryview(self._buffer)[self._filled : self._filled + READ_SIZE]

    def buffer_updated(self, nbytes: int) -> None:
        end = self._filled + nbytes
        buffer = self._buffer
        try:
            packets, used = mqtt_wire.split(buffer, end)
            acks = self._handle(packets)
        except MalformedPacket as exc:
            self._fail(MqttError(f"malformed packet from the broker: {exc}"))
            return
        rest = end - used
        if used and rest:
            buffer[:rest] = buffer[used:end]  # the same length: allowed while the view is held
        self._filled = rest
        if acks and self._transport is not None:
            self._transport.write(acks)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(MqttError(f"connection lost: {exc}" if exc else "connection closed by the broker"))

    def _handle(self, packets: list[mqtt_wire.Packet]) -> bytearray:
        acks = bytearray()
        for kind, flags, body in packets:
            if kind == mqtt_wire.PUBLISH:
                message = mqtt_wire.read_publish(flags, body)
                try:
                    self._on_message(message.topic, message.payload)
                except Exception:
                    log.exception("failed to handle MQTT message on %s", message.topic)
                if message.qos:
                    acks += mqtt_wire.puback_packet(message.packet_id)
            elif kind in (mqtt_wire.PUBACK, mqtt_wire.SUBACK):
                waiter = self._waiting.pop(mqtt_wire.read_packet_id(body), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(body[2:])
            elif kind == mqtt_wire.PINGRESP:
                self._ping_sent = None
            elif kind == mqtt_wire.CONNACK and len(body) >= 2 and not self._connack.done():
                self._connack.set_result(body[1])
            else:
                raise MalformedPacket(f"unexpected packet type {kind}")
        return acks

    # --- operations ---

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish; at QoS 1 wait until the broker's PUBACK (raises MqttError)."""
        if qos == 0:
            self._write(mqtt_wire.publish_packet(topic, payload, qos=0, retain=retain))
            return
        try:
            async with asyncio.timeout(timeout):
                async with self._slots:
                    packet_id, reply = self._expect()
                    try:
                        self._write(publish(topic, payload, qos=1, retain=retain, packet_id=packet_id))
                        await reply
                    finally:
                        self._waiting.pop(packet_id, None)
        except TimeoutError:
            raise MqttError(f"no PUBACK within {timeout} s") from None

    async def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK (raises MqttError, also when the broker refuses)."""
        try:
            async with asyncio.timeout(timeout):
                packet_id, reply = self._expect()
                try:
                    self._write(mqtt_wire.subscribe_packet(packet_id, [(topic, qos)]))
                    codes = await reply
                finally:
                    self._waiting.pop(packet_id, None)
        except TimeoutError:
            raise MqttError(f"no SUBACK within {timeout} s") from None
        if not codes or codes[0] == 0x80:
            raise MqttError(f"the broker refused the subscription to {topic}")

    async def wait_closed(self) -> None:
        """Wait until the connection ends; raises the MqttError that ended it."""
        await asyncio.shield(self._closed)
        if self.error is not None:
            raise self.error

    def disconnect(self) -> None:
        """Say DISCONNECT (so the broker does not publish the will) and close."""
        transport, self._transport = self._transport, None
        if transport is not None and not transport.is_closing():
            transport.write(mqtt_wire.DISCONNECT_PACKET)
            transport.close()
        self._fail(MqttError("disconnected"))

    # --- inside ---

    def _expect(self) -> tuple[int, asyncio.Future[bytes]]:
        if self.error is not None:
            raise self.error
        packet_id = self._last_id
        for _ in range(65535):
            packet_id = packet_id % 65535 + 1
            if packet_id not in self._waiting:
                break
        else:  # pragma: no cover -- max_inflight is far below 65535
            raise MqttError("no free packet id")
        self._last_id = packet_id
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[packet_id] = reply
        return packet_id, reply

    def _write(self, packet: bytes) -> None:
        if self.error is not None:
            raise self.error
        if self._transport is None or self._transport.is_closing():
            raise MqttError("not connected")
        self._transport.write(packet)
        self._last_out = time.monotonic()

    def _fail(self, error: MqttError) -> None:
        if self.error is not None:
            return
        self.error = error
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        waiters: list[asyncio.Future[Any]] = [self._connack, *self._waiting.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved here: nobody may be waiting any more
        self._waiting.clear()
        if not self._closed.done():
            self._closed.set_result(None)
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()

    async def _ping(self) -> None:
        """Keepalive: a PINGREQ when nothing was sent for half the keepalive; no PINGRESP within
        the keepalive ends the connection."""
        period = max(self._keepalive / 2, 0.5)
        while self.error is None:
            await asyncio.sleep(period / 2)
            now = time.monotonic()
            if self._ping_sent is not None and now - self._ping_sent > self._keepalive:
                self._fail(MqttError(f"no PINGRESP within {self._keepalive} s"))
                return
            if self._ping_sent is None and now - self._last_out >= period:
                self._ping_sent = now
                try:
                    self._write(mqtt_wire.PINGREQ_PACKET)
                except MqttError:
                    return


async def connect(
    host: str,
    port: int,
    *,
    client_id: str,
    on_message: OnMessage,
    keepalive: int = 60,
    clean_session: bool = False,
    will: Will | None = None,
    username: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    max_inflight: int = 1000,
    timeout: float = 10.0,
) -> MqttConnection:
    """Open a connection and wait for the broker's CONNACK (raises MqttError)."""
    loop = asyncio.get_running_loop()
    connection = MqttConnection(on_message, keepalive=keepalive, max_inflight=max_inflight)
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: connection, host, port, ssl=tls, server_hostname=host if tls is not None else None
            )
            connection._write(
                mqtt_wire.connect_packet(
                    client_id,
                    keepalive=keepalive,
                    clean_session=clean_session,
                    will=will,
                    username=username,
                    password=password,
                )
            )
            code = await connection._connack
    except TimeoutError:
        connection._fail(MqttError(f"no CONNACK within {timeout} s"))
        raise MqttError(f"could not connect to {host}:{port} within {timeout} s") from None
    except OSError as exc:
        connection._fail(MqttError(str(exc)))
        raise MqttError(f"could not connect to {host}:{port}: {exc}") from exc
    if code != 0:
        connection.disconnect()
        raise MqttError(f"the broker refused the connection: {mqtt_wire.CONNACK_CODES.get(code, code)}")
    if keepalive > 0:
        connection._pinger = asyncio.create_task(connection._ping(), name="cunxiang-mqtt-ping")
    return connection
