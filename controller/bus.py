"""The controller's MQTT session: the only module the rest of the controller reaches MQTT through.

`MqttBus.run` keeps one connection alive (reconnecting with exponential backoff and jitter),
announces the controller with a retained birth and a will on the same status topic, subscribes
with a few wildcards, and hands each message to `on_message(topic, payload)`. The rest of the
controller only sees `await bus.publish(...)` and that callback.

The connection itself is `controller.mqtt_client` (MQTT 3.1.1 on asyncio), which hands each message
to `on_message` as it is read and acknowledges the messages of one read in one write: receiving
is the controller's hot path (a county's acknowledgements arrive at once), and this costs a
fraction of what aiomqtt on paho-mqtt did (docs/performance.md, `cunxiang bench ingest`).
Messages that arrive while the session is being set up (retained statuses, after the SUBSCRIBE)
are held until the bus is connected and `on_connected` has run (`_Inbox`), then handled in order.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from controller.metrics import Metrics
from controller.mqtt_client import MqttConnection, MqttError, connect
from devices.backoff import reconnect_delay
from devices.broker import BrokerAddress
from devices.mqtt_wire import Will

log = logging.getLogger(__name__)


class BusUnavailable(Exception):
    """The broker cannot be reached right now; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


StatusPayload = Callable[[str, int], bytes]
OnMessage = Callable[[str, bytes], None]


class _Inbox:
    """Where the connection hands each message it reads.

    Until `open()` the messages are held: those that arrive while the session is being set up
    (retained statuses, after the SUBSCRIBE) are handled once the bus is connected and
    `on_connected` has run, in order. From then on each goes to `on_message` as it is read.
    """

    def __init__(self, on_message: OnMessage) -> None:
        self._on_message = on_message
        self._held: list[tuple[str, bytes]] | None = []

    def put(self, topic: str, payload: bytes) -> None:
        if self._held is not None:
            self._held.append((topic, payload))
            return
        try:
            self._on_message(topic, payload)
        except Exception:
            # Never into the connection's read loop.
            log.exception("failed to handle MQTT message on %s", topic)

    def open(self) -> None:
        held, self._held = self._held or [], None
        for topic, payload in held:
            self.put(topic, payload)


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
        self._client: MqttConnection | None = None
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
        except MqttError as exc:
            raise BusUnavailable(exc.reason) from exc

    async def run(self) -> None:
        """Stay connected until cancelled."""
        attempt = 0
        while not self._closing:
            self._session = int(time.time() * 1000)
            will = Will(self._status_topic, self._status_payload("lost", self._session), qos=1, retain=True)
            inbox = _Inbox(self._on_message)
            client: MqttConnection | None = None
            try:
                client = await connect(
                    self.address.host,
                    self.address.port,
                    client_id=self._client_id,
                    on_message=inbox.put,
                    keepalive=self._keepalive,
                    clean_session=False,
                    will=will,
                    username=self.address.username,
                    password=self.address.password,
                    tls=self.address.tls,
                    max_inflight=1000,
                    timeout=10,
                )
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
                # Messages go to on_message as they are read (_Inbox); this waits for the
                # connection to end, and raises MqttError when it does.
                await client.wait_closed()
            except Exception as exc:
                if not isinstance(exc, MqttError):
                    log.exception("unexpected error in the MQTT session")
                self._lost()
                attempt += 1
                delay = reconnect_delay(attempt)
                log.warning("MQTT broker %s unavailable (%s); retrying in %.1f s", self.address, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self._lost()
                if client is not None:
                    client.disconnect()

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
            except MqttError as exc:
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
