"""The controller's MQTT connection; the only module that imports aiomqtt.

`MqttBus.run` keeps one connection alive (reconnecting with exponential backoff and jitter),
announces the controller with a retained birth and a will on the same status topic, subscribes
with a few wildcards, and hands each message to `on_message(topic, payload)`. The rest of the
controller only sees `await bus.publish(...)` and that callback.

Receiving is the controller's hot path (a county's acknowledgements arrive at once), and two
things make it cheaper than aiomqtt's defaults, without changing what is received or in which
order:

- once connected, each message goes to `on_message` as paho-mqtt reads it (`_Inbox`, through
  aiomqtt's `queue_type` hook), instead of through aiomqtt's queue and `messages` iterator, which
  cost an asyncio task and a wait per message;
- paho-mqtt reads each packet's fixed header one byte per `recv` call, so the connection's socket
  is wrapped in `_BufferedSocket`, which reads up to 64 KB at a time and says how much it holds
  (`pending()`, which aiomqtt already asks of TLS sockets), so that one readiness event of the
  event loop reads every packet that has arrived.

Together they more than halve the controller's CPU time per acknowledgement (docs/performance.md,
`cunxiang bench ingest`).
"""

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiomqtt

from controller.metrics import Metrics
from devices.backoff import reconnect_delay
from devices.broker import BrokerAddress

log = logging.getLogger(__name__)


class BusUnavailable(Exception):
    """The broker cannot be reached right now; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


StatusPayload = Callable[[str, int], bytes]
OnMessage = Callable[[str, bytes], None]

READ_SIZE = 65536


class _BufferedSocket:
    """A non-blocking socket whose `recv` is served from a buffer, filled at most once (up to
    READ_SIZE bytes) per readiness event of the event loop.

    aiomqtt's read callback calls paho's `loop_read` (one packet, or part of one) while `pending()`
    is positive, and `pending()` returning 0 ends the callback. So the buffer may be refilled from
    the socket only on the first `recv` after that; a later `recv` finding it empty says "no data"
    (BlockingIOError), paho keeps the partial packet, and the socket, still readable, brings the
    callback back on the next turn of the event loop. Each callback thus handles at most
    READ_SIZE bytes (a few hundred acknowledgements) and the loop stays responsive.
    """

    __slots__ = ("_buffer", "_may_fill", "_position", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._position = 0
        self._may_fill = True

    def recv(self, bufsize: int) -> bytes:
        if self._position >= len(self._buffer):
            if not self._may_fill:
                raise BlockingIOError
            self._may_fill = False
            data: bytes = self._sock.recv(max(bufsize, READ_SIZE))
            if len(data) <= bufsize:
                return data
            self._buffer, self._position = data, 0
        start = self._position
        self._position = min(start + bufsize, len(self._buffer))
        return self._buffer[start : self._position]

    def pending(self) -> int:
        left = len(self._buffer) - self._position
        if left == 0:
            self._may_fill = True
        return left

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _buffer_reads(client: aiomqtt.Client) -> None:
    """Wrap the connection's plain TCP socket in a `_BufferedSocket` (not TLS: it buffers already)."""
    paho = getattr(client, "_client", None)
    sock = getattr(paho, "_sock", None)
    if sock is None or isinstance(sock, (ssl.SSLSocket, _BufferedSocket)) or not hasattr(sock, "recv"):
        return
    paho._sock = _BufferedSocket(sock)  # type: ignore[union-attr]


class _Inbox:
    """Where aiomqtt puts each message it receives (as its queue, through `queue_type`).

    Until `open()` the messages are held, as aiomqtt's own queue held them until the session loop
    read it: those that arrive while the session is being set up (retained statuses, after the
    SUBSCRIBE) are handled once the bus is connected, in order. From then on each is handed to
    `on_message` as paho reads it, instead of through aiomqtt's queue and `messages` iterator,
    which cost an asyncio task and a wait per message.
    """

    def __init__(self, on_message: OnMessage) -> None:
        self._on_message = on_message
        self._held: list[aiomqtt.Message] | None = []

    def put(self, message: aiomqtt.Message) -> None:
        if self._held is not None:
            self._held.append(message)
            return
        try:
            self._on_message(str(message.topic), bytes(message.payload))
        except Exception:
            # Never into paho's read loop: aiomqtt would take it for a broken connection.
            log.exception("failed to handle MQTT message on %s", message.topic)

    def open(self) -> None:
        held, self._held = self._held or [], None
        for message in held:
            self.put(message)

    def queue_type(self) -> "type[asyncio.Queue[aiomqtt.Message]]":
        inbox = self

        class InboxQueue(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                inbox.put(item)

        return InboxQueue


class MqttBus:
    """One persistent MQTT session for the controller."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        status_topic: str,
        status_payload: StatusPayload,
        subscriptions: list[str],
        on_message: OnMessage,
        on_connected: Callable[[], None],
        metrics: Metrics,
        keepalive: int = 30,
    ) -> None:
        self.address = address
        self._client_id = client_id
        self._status_topic = status_topic
        self._status_payload = status_payload
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connected = on_connected
        self._metrics = metrics
        self._keepalive = keepalive
        self._client: aiomqtt.Client | None = None
        self._session = 0
        self._connected = asyncio.Event()
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK; raises BusUnavailable."""
        client = self._client
        if client is None:
            raise BusUnavailable("not connected to the MQTT broker")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=timeout)
        except aiomqtt.MqttError as exc:
            raise BusUnavailable(str(exc)) from exc

    async def run(self) -> None:
        """Stay connected until cancelled."""
        attempt = 0
        while not self._closing:
            self._session = int(time.time() * 1000)
            will = aiomqtt.Will(
                self._status_topic, self._status_payload("lost", self._session), qos=1, retain=True
            )
            inbox = _Inbox(self._on_message)
            try:
                async with aiomqtt.Client(
                    self.address.host,
                    self.address.port,
                    username=self.address.username,
                    password=self.address.password,
                    identifier=self._client_id,
                    clean_session=False,
                    keepalive=self._keepalive,
                    will=will,
                    max_inflight_messages=1000,
                    timeout=10,
                    queue_type=inbox.queue_type(),
                    tls_context=self.address.tls,
                ) as client:
                    # aiomqtt warns for every publish beyond 10 in flight; a county's alert has
                    # thousands in flight by design, up to the in-flight window.
                    client.pending_calls_threshold = 1000
                    _buffer_reads(client)
                    await client.publish(
                        self._status_topic, self._status_payload("online", self._session), qos=1, retain=True
                    )
                    for topic in self._subscriptions:
                        await client.subscribe(topic, qos=1)
                    if attempt:
                        self._metrics.mqtt_reconnects.inc()
                    attempt = 0
                    self._client = client
                    self._metrics.mqtt_connected.set(1)
                    self._connected.set()
                    log.info("connected to MQTT broker %s as %s", self.address, self._client_id)
                    self._on_connected()
                    inbox.open()
                    # Messages go to on_message as they are read (_Inbox); this only waits for
                    # the connection to end, and raises MqttError when it does.
                    async for message in client.messages:
                        self._on_message(str(message.topic), bytes(message.payload))  # pragma: no cover
            except Exception as exc:
                if not isinstance(exc, aiomqtt.MqttError):
                    log.exception("unexpected error in the MQTT session")
                self._lost()
                attempt += 1
                delay = reconnect_delay(attempt)
                log.warning("MQTT broker %s unavailable (%s); retrying in %.1f s", self.address, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self._lost()

    async def close(self) -> None:
        """Say goodbye (retained `offline`, so no will fires); cancelling `run` then disconnects cleanly."""
        self._closing = True
        client = self._client
        if client is not None:
            try:
                await client.publish(
                    self._status_topic,
                    self._status_payload("offline", self._session),
                    qos=1,
                    retain=True,
                    timeout=5,
                )
            except aiomqtt.MqttError as exc:
                log.warning("could not publish offline status: %s", exc)

    def _lost(self) -> None:
        if self._client is not None:
            log.log(
                logging.INFO if self._closing else logging.WARNING,
                "disconnected from MQTT broker %s",
                self.address,
            )
        self._client = None
        self._connected.clear()
        self._metrics.mqtt_connected.set(0)
