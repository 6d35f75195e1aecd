"""The controller: the parts wired together, started and stopped in order.

Start: schema and bundled regions, memory from the database (terminals, live broadcasts), the
embedded broker if no broker is configured, then the MQTT session, the batched writer and the
expiry sweep. Stop (uvicorn's order): refuse new broadcasts, flush acknowledgements, publish the
controller's `offline` status, disconnect, flush again, close.
"""

import asyncio
import logging
import time
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from controller.broadcasts import BroadcastRequest, accept, build_command, live_broadcasts, new_broadcast_id
from controller.bus import BrokerAddress, MqttBus
from controller.db import init_schema, make_engine
from controller.delivery import DeliveryState
from controller.dispatch import Dispatcher
from controller.embedded_broker import EmbeddedBroker
from controller.metrics import Metrics
from controller.models import Broadcast, BroadcastState
from controller.presence import UNKNOWN, PresenceTracker
from controller.regions import ensure_bundled_regions
from controller.settings import Settings
from controller.terminals import TerminalSpec, all_terminals, register_terminals
from controller.tracker import DeliveryTracker, LiveBroadcast
from controller.writer import DbWriter
from devices.errors import ProtocolError
from devices.messages import (
    Ack,
    ControllerStatus,
    Heartbeat,
    Presence,
    TerminalStatus,
    decode,
    encode,
    now_utc,
)
from devices.topics import TerminalChannel

log = logging.getLogger(__name__)

# A terminal still playing at expiry may finish; after this long it is marked expired too.
PLAYBACK_GRACE = timedelta(minutes=10)
_REJECTION_LOG_INTERVAL_S = 60.0


class NotAccepting(RuntimeError):
    """The controller is shutting down and takes no new broadcasts."""


class Controller:
    """One controller process."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.metrics = metrics or Metrics()
        self.engine = make_engine(settings.database_url)
        self.writer = DbWriter(
            self.engine, self.metrics, interval=settings.ack_batch_interval_s, max_rows=settings.ack_batch_max
        )
        self.tracker = DeliveryTracker(self.writer, self.metrics, playback_grace=PLAYBACK_GRACE)
        self.presence = PresenceTracker(self.writer, self.metrics)
        self.broker: EmbeddedBroker | None = None
        self.bus: MqttBus | None = None
        self.dispatcher: Dispatcher | None = None
        self.accepting = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._rejections_logged: dict[str, float] = {}

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.connected

    async def start(self, *, connect_timeout: float | None = 10.0) -> None:
        """Start everything; wait up to `connect_timeout` s for the broker (None: don't wait)."""
        await asyncio.to_thread(init_schema, self.engine)
        loaded = await self.writer.call(ensure_bundled_regions)
        if loaded:
            log.info("loaded %d bundled administrative regions (咸宁市)", loaded)
        self.presence.load(await self.writer.call(all_terminals))
        for broadcast, states in await self.writer.call(live_broadcasts):
            self.tracker.track(_live(broadcast, states), now_utc())
        address = await self._broker_address()
        self.bus = MqttBus(
            address,
            client_id=f"cunxiang-{self.settings.controller_id}",
            status_topic=self.topics.controller_status(self.settings.controller_id),
            status_payload=self._status_payload,
            subscriptions=self.topics.controller_subscriptions(),
            on_message=self.handle_message,
            on_connected=self._on_connected,
            metrics=self.metrics,
            keepalive=self.settings.mqtt_keepalive_s,
        )
        self.dispatcher = Dispatcher(self.bus, self.tracker, self.writer, self.topics, self.metrics)
        self._run(self.bus.run())
        self._run(self.writer.run())
        self._run(self._sweep())
        self.accepting = True
        if connect_timeout is not None:
            try:
                await self.bus.wait_connected(connect_timeout)
            except TimeoutError:
                log.warning(
                    "no MQTT broker at %s yet; broadcasts are stored and sent once it answers", address
                )

    async def stop(self) -> None:
        self.accepting = False
        await self.writer.flush()
        if self.bus is not None:
            await self.bus.close()
        for task in self._tasks + list(self._background):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        self._tasks.clear()
        await self.writer.flush()
        self.writer.close()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        self.engine.dispose()

    async def submit(self, request: BroadcastRequest) -> Broadcast:
        """Accept, persist and publish a broadcast; raises BroadcastRejected or NotAccepting."""
        if not self.accepting or self.dispatcher is None:
            raise NotAccepting("the controller is not accepting broadcasts")
        now = now_utc()
        command = build_command(
            request,
            broadcast_id=new_broadcast_id(now),
            issuer_region=self.settings.county_region,
            now=now,
            max_expires_in=self.settings.max_expires_in_s,
        )
        broadcast, terminals = await self.writer.call(lambda session: accept(session, request, command))
        self.metrics.broadcasts_accepted.labels(command.kind.value).inc()
        live = _live(broadcast, dict.fromkeys(terminals, DeliveryState.PENDING))
        self.tracker.track(live, now)
        log.info(
            "broadcast %s accepted: %s to %s, %d terminals",
            broadcast.id,
            broadcast.kind,
            ",".join(broadcast.regions),
            len(terminals),
        )
        if await self.dispatcher.publish(live):
            broadcast.state = BroadcastState.ACTIVE
        return broadcast

    async def register(self, specs: list[TerminalSpec]) -> tuple[int, int]:
        """Register terminals (raises TerminalsRejected) and start tracking their presence."""
        counts = await self.writer.call(lambda session: register_terminals(session, specs))
        for spec in specs:
            self.presence.register(spec.id, spec.region)
        return counts

    def presence_of(self, terminal_id: str) -> str:
        """Live presence; `unknown` for everyone while the controller itself is cut off from the broker."""
        entry = self.presence.get(terminal_id)
        if entry is None or not self.connected:
            return UNKNOWN
        return entry.presence

    def handle_message(self, topic: str, payload: bytes) -> None:
        """Route one MQTT message; a bad one is counted, logged (rate-limited) and dropped."""
        try:
            parsed = self.topics.parse_terminal_topic(topic)
            self.metrics.mqtt_received.labels(parsed.channel.value).inc()
            at = now_utc()
            if parsed.channel is TerminalChannel.ACK:
                ack = decode(Ack, payload)
                self._check_sender(parsed.terminal_id, ack.terminal_id)
                rejection = self.tracker.on_ack(ack, at)
            elif parsed.channel is TerminalChannel.STATUS:
                status = decode(TerminalStatus, payload)
                self._check_sender(parsed.terminal_id, status.terminal_id)
                rejection = self.presence.on_status(status, at)
                if rejection is None and status.state is Presence.ONLINE and self.dispatcher is not None:
                    self._spawn(self.dispatcher.terminal_returned(status.terminal_id))
            else:
                heartbeat = decode(Heartbeat, payload)
                self._check_sender(parsed.terminal_id, heartbeat.terminal_id)
                rejection = self.presence.on_heartbeat(heartbeat, at)
        except ProtocolError as exc:
            self._reject(exc.reason, f"{topic}: {exc.detail}")
            return
        except Exception:
            # A defect of ours must cost one message, never the subscription loop.
            log.exception("failed to handle MQTT message on %s", topic)
            self.metrics.mqtt_rejected.labels("internal_error").inc()
            return
        if rejection is not None:
            self._reject(rejection, topic)

    def _check_sender(self, topic_terminal: str, payload_terminal: str) -> None:
        if topic_terminal != payload_terminal:
            raise ProtocolError("terminal_mismatch", f"payload names terminal {payload_terminal!r}")

    def _reject(self, reason: str, detail: str) -> None:
        self.metrics.mqtt_rejected.labels(reason).inc()
        now = time.monotonic()
        if now - self._rejections_logged.get(reason, -_REJECTION_LOG_INTERVAL_S) >= _REJECTION_LOG_INTERVAL_S:
            self._rejections_logged[reason] = now
            log.warning(
                "ignored MQTT message (%s): %s [further ones counted in metrics for %.0f s]",
                reason,
                detail,
                _REJECTION_LOG_INTERVAL_S,
            )

    async def _on_connected(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.resume()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.expiry_sweep_interval_s)
            self.tracker.sweep(now_utc())

    def _status_payload(self, state: str, session: int) -> bytes:
        return encode(
            ControllerStatus(
                controller_id=self.settings.controller_id,
                state=Presence(state),
                session=session,
                at=now_utc(),
            )
        )

    async def _broker_address(self) -> BrokerAddress:
        if self.settings.mqtt_url is not None:
            return BrokerAddress.from_url(self.settings.mqtt_url)
        self.broker = EmbeddedBroker(self.settings.embedded_broker_host, self.settings.embedded_broker_port)
        await asyncio.to_thread(self.broker.start)
        log.info("no CUNXIANG_MQTT_URL set: started the embedded MQTT broker (amqtt) on %s", self.broker.url)
        return BrokerAddress(self.broker.host, self.broker.port)

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coroutine))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _live(broadcast: Broadcast, states: dict[str, DeliveryState]) -> LiveBroadcast:
    return LiveBroadcast(
        id=broadcast.id,
        expires_at=broadcast.expires_at,
        regions=broadcast.regions,
        payload=broadcast.command.encode(),
        states=states,
    )
