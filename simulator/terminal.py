"""One simulated terminal: its MQTT session, its player, its heartbeats, and the faults a scenario
gives it (`Condition`): power loss, a flapping link, speaker and amplifier faults, battery
supply, weak signal, heat, slowness and message loss."""

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time

import aiomqtt

from devices.agent.link import TerminalLink
from devices.backoff import reconnect_delay
from devices.messages import Command, Heartbeat, encode, now_utc
from devices.signing import KeySet
from devices.terminal_core import Step, TerminalCore
from devices.topics import TopicScheme
from simulator.fleet import Behaviour, Condition, SimulatedSpec

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
        keys: KeySet,
        seed: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.spec = spec
        self._link = TerminalLink(
            spec.terminal_id,
            spec.region,
            topics,
            host,
            port,
            tls,
            firmware=behaviour.firmware,
            heartbeat_interval_s=behaviour.heartbeat_interval_s,
        )
        self._topics = topics
        self._behaviour = behaviour
        self._rng = random.Random(f"{seed}-{spec.terminal_id}")
        self._keys = keys
        self.core = TerminalCore(spec.terminal_id, keys)
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._player: asyncio.Task[None] | None = None
        self._playing: tuple[str, float] | None = None
        """the command being played and when (monotonic) it will end"""
        self._left: dict[str, float] = {}
        """seconds left of pre-empted programmes, for when they resume"""
        self._started = time.monotonic()
        self.commands_seen = 0
        self.commands_dropped = 0
        self.condition = Condition()
        self._powered = asyncio.Event()
        self._powered.set()
        self._beat_now = asyncio.Event()
        self._flapper: asyncio.Task[None] | None = None

    def set_condition(self, condition: Condition) -> None:
        """Change the terminal's health from now on; it reports the change at once (a heartbeat)."""
        before, self.condition = self.condition, condition
        if before.powered and not condition.powered:
            self._power_off()
        elif condition.powered and not before.powered:
            self._powered.set()
        if condition.flap_period_s != before.flap_period_s:
            if self._flapper is not None:
                self._flapper.cancel()
                self._flapper = None
                self._powered.set()
            if condition.flap_period_s is not None:
                self._flapper = asyncio.create_task(self._flap(condition.flap_period_s))
        self._beat_now.set()

    def _power_off(self) -> None:
        """Drop the connection without a goodbye and forget everything (its memory is RAM)."""
        self._powered.clear()
        self.connected.clear()
        if self._player is not None:
            self._player.cancel()
            self._player = None
        self._playing, self._left = None, {}
        self.core = TerminalCore(self.spec.terminal_id, self._keys)
        client = self._client
        paho_socket = client._client.socket() if client is not None else None
        if isinstance(paho_socket, socket.socket):
            with contextlib.suppress(OSError):
                paho_socket.shutdown(socket.SHUT_RDWR)

    async def _flap(self, period: float) -> None:
        while True:
            await asyncio.sleep(period / 2)
            self._power_off()
            await asyncio.sleep(period / 2)
            if self.condition.powered:
                self._powered.set()

    async def run(self) -> None:
        """Stay connected until cancelled; say goodbye (`offline`) when cancelled."""
        attempt = 0
        while True:
            await self._powered.wait()
            try:
                async with self._link.client() as client:
                    self._client = client
                    await self._link.announce(client)
                    self.connected.set()
                    attempt = 0
                    heartbeat = asyncio.create_task(self._heartbeats(client))
                    try:
                        async for message in client.messages:
                            if self.commands_dropped < self._behaviour.drop_first_commands:
                                self.commands_dropped += 1
                                continue
                            if self._rng.random() < self.condition.loss:
                                continue
                            if self.condition.answer_delay_s:
                                await asyncio.sleep(self.condition.answer_delay_s)
                            await self._carry_out(self.core.on_payload(bytes(message.payload), now_utc()))
                    except asyncio.CancelledError:
                        if self._player is not None:
                            self._player.cancel()
                        self.connected.clear()
                        await self._link.goodbye(client)
                        raise
                    finally:
                        heartbeat.cancel()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self._client = None
                if not self._powered.is_set():
                    continue
                attempt += 1
                delay = reconnect_delay(attempt, self._rng)
                log.debug("%s: broker unavailable (%s); retry in %.1f s", self.spec.terminal_id, exc, delay)
                await asyncio.sleep(delay)

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        interval = self._behaviour.heartbeat_interval_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._beat_now.wait(), self._rng.uniform(0, min(interval, 5)))
        while True:
            self._beat_now.clear()
            condition = self.condition
            playing = self.core.current.id if self.core.current else None
            temperature = condition.temperature_c
            beat = Heartbeat(
                terminal_id=self.spec.terminal_id,
                at=now_utc(),
                uptime_s=int(time.monotonic() - self._started),
                volume=80,
                amplifier=condition.amplifier,
                speaker=condition.speaker,
                supply=condition.supply,
                battery_pct=condition.battery_pct,
                temperature_c=round(self._rng.uniform(15, 35), 1) if temperature is None else temperature,
                signal_dbm=self._rng.randint(-95, -60)
                if condition.signal_dbm is None
                else condition.signal_dbm,
                firmware=self._behaviour.firmware,
                playing=playing,
                clock_skew_s=self.core.clock_skew_s,
            )
            await client.publish(self._topics.terminal_heartbeat(self.spec.terminal_id), encode(beat), qos=0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), interval * self._rng.uniform(0.9, 1.1))

    async def _carry_out(self, step: Step) -> None:
        client = self._client
        if client is None:
            return
        try:
            for ack in step.acks:
                if self._rng.random() < self.condition.loss:
                    continue
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
        if self.condition.silent:
            # A terminal senses its speaker line or amplifier and says it could not play.
            fault = f"speaker {self.condition.speaker.value}, amplifier {self.condition.amplifier.value}"
            await self._carry_out(self.core.on_failed(command.id, now_utc(), fault))
            return
        await self._carry_out(self.core.on_started(command.id, now_utc()))
        length = self._left.pop(
            command.id, self._behaviour.playback(command.content, command.status) * command.repeat
        )
        self._playing = (command.id, time.monotonic() + length)
        await asyncio.sleep(length)
        self._playing = None
        await self._carry_out(self.core.on_finished(command.id, now_utc()))
