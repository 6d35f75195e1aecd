"""The controller's MQTT connection; the only module that imports aiomqtt.

`MqttBus.run` keeps one connection alive (reconnecting with exponential backoff and jitter),
announces the controller with a retained birth and a will on the same status topic, subscribes
with a few wildcards, and hands each message to `on_message(topic, payload)`. The rest of the
controller only sees `await bus.publish(...)` and that callback.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt

from controller.metrics import Metrics
from devices.backoff import reconnect_delay

log = logging.getLogger(__name__)


class BusUnavailable(Exception):
    """The broker cannot be reached right now; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "BrokerAddress":
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"no host in broker URL {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or 1883,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


StatusPayload = Callable[[str, int], bytes]


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
        on_message: Callable[[str, bytes], None],
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
                ) as client:
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
                    async for message in client.messages:
                        self._on_message(str(message.topic), bytes(message.payload))
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
