"""One simulated terminal: its MQTT session, its player, its heartbeats."""

import asyncio
import contextlib
import logging
import random
import time

import aiomqtt

from devices.backoff import reconnect_delay
from devices.messages import (
    Amplifier,
    Command,
    Heartbeat,
    Presence,
    Speaker,
    Supply,
    TerminalStatus,
    encode,
    now_utc,
)
from devices.terminal_core import Step, TerminalCore
from devices.topics import TopicScheme
from simulator.fleet import Behaviour, SimulatedSpec

log = logging.getLogger(__name__)


class SimulatedTerminal:
    """Connects, announces itself (retained birth, will `lost`), plays what it is told, and reports."""

    def __init__(
        self,
        spec: SimulatedSpec,
        host: str,
        port: int,
        topics: TopicScheme,
        behaviour: Behaviour,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self._host = host
        self._port = port
        self._topics = topics
        self._behaviour = behaviour
        self._rng = random.Random(f"{seed}-{spec.terminal_id}")
        self.core = TerminalCore(spec.terminal_id)
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._session = 0
        self._player: asyncio.Task[None] | None = None
        self._playing: tuple[str, float] | None = None
        """the command being played and when (monotonic) it will end"""
        self._left: dict[str, float] = {}
        """seconds left of pre-empted programmes, for when they resume"""
        self._started = time.monotonic()
        self.commands_seen = 0
        self.commands_dropped = 0

    async def run(self) -> None:
        """Stay connected until cancelled; say goodbye (`offline`) when cancelled."""
        attempt = 0
        while True:
            self._session = int(time.time() * 1000)
            will = aiomqtt.Will(self._status_topic, self._status(Presence.LOST), qos=1, retain=True)
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    identifier=self.spec.terminal_id,
                    clean_session=False,
                    keepalive=60,
                    will=will,
                    timeout=30,
                ) as client:
                    self._client = client
                    await self._online(client)
                    attempt = 0
                    heartbeat = asyncio.create_task(self._heartbeats(client))
                    try:
                        async for message in client.messages:
                            if self.commands_dropped < self._behaviour.drop_first_commands:
                                self.commands_dropped += 1
                                continue
                            await self._carry_out(self.core.on_payload(bytes(message.payload), now_utc()))
                    except asyncio.CancelledError:
                        if self._player is not None:
                            self._player.cancel()
                        await self._goodbye(client)
                        raise
                    finally:
                        heartbeat.cancel()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self._client = None
                attempt += 1
                delay = reconnect_delay(attempt, self._rng)
                log.debug("%s: broker unavailable (%s); retry in %.1f s", self.spec.terminal_id, exc, delay)
                await asyncio.sleep(delay)

    @property
    def _status_topic(self) -> str:
        return self._topics.terminal_status(self.spec.terminal_id)

    def _status(self, state: Presence) -> bytes:
        return encode(
            TerminalStatus(
                terminal_id=self.spec.terminal_id,
                state=state,
                session=self._session,
                region=self.spec.region,
                firmware=self._behaviour.firmware,
                heartbeat_interval_s=self._behaviour.heartbeat_interval_s,
                at=now_utc(),
            )
        )

    async def _online(self, client: aiomqtt.Client) -> None:
        for topic in self._topics.terminal_subscriptions(self.spec.terminal_id, self.spec.region):
            await client.subscribe(topic, qos=1)
        await client.publish(self._status_topic, self._status(Presence.ONLINE), qos=1, retain=True)
        self.connected.set()

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        self.connected.clear()
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self._status_topic, self._status(Presence.OFFLINE), qos=1, retain=True, timeout=5
            )

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        interval = self._behaviour.heartbeat_interval_s
        await asyncio.sleep(self._rng.uniform(0, min(interval, 5)))
        while True:
            playing = self.core.current.id if self.core.current else None
            beat = Heartbeat(
                terminal_id=self.spec.terminal_id,
                at=now_utc(),
                uptime_s=int(time.monotonic() - self._started),
                volume=80,
                amplifier=Amplifier.OK,
                speaker=Speaker.OK,
                supply=Supply.MAINS,
                temperature_c=round(self._rng.uniform(15, 35), 1),
                signal_dbm=self._rng.randint(-95, -60),
                firmware=self._behaviour.firmware,
                playing=playing,
            )
            await client.publish(self._topics.terminal_heartbeat(self.spec.terminal_id), encode(beat), qos=0)
            await asyncio.sleep(interval * self._rng.uniform(0.9, 1.1))

    async def _carry_out(self, step: Step) -> None:
        client = self._client
        if client is None:
            return
        try:
            for ack in step.acks:
                await client.publish(self._topics.terminal_ack(self.spec.terminal_id), encode(ack), qos=1)
        except aiomqtt.MqttError as exc:
            # The controller resends to terminals that have not finished when they reconnect, and
            # the core answers a repeat with its last ack: that is how this one gets through.
            log.debug("%s: ack not published (%s)", self.spec.terminal_id, exc)
        if step.stop is not None and self._player is not None:
            self._player.cancel()
            self._player = None
            if self._playing is not None and self._playing[0] == step.stop:
                # A pre-empted programme resumes where it was interrupted.
                self._left[step.stop] = max(0.0, self._playing[1] - time.monotonic())
            self._playing = None
            aside = {command.id for command in self.core.suspended}
            self._left = {k: v for k, v in self._left.items() if k in aside}
        if step.start is not None:
            self.commands_seen += 1
            self._player = asyncio.create_task(self._play(step.start))

    async def _play(self, command: Command) -> None:
        await asyncio.sleep(self._behaviour.start_delay(self._rng))
        await self._carry_out(self.core.on_started(command.id, now_utc()))
        length = self._left.pop(command.id, self._behaviour.playback(command.content) * command.repeat)
        self._playing = (command.id, time.monotonic() + length)
        await asyncio.sleep(length)
        self._playing = None
        await self._carry_out(self.core.on_finished(command.id, now_utc()))
