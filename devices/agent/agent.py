"""The terminal agent: one connection to the broker, kept up across outages, and the loudspeaker.

Every command payload goes to the `TerminalCore` (the simulator's state machine too), and the
agent carries out the `Step` it answers: what was answered is saved to disk first, the acks are
published next, then what must stop is stopped and what must start is started. Playing a command
means: its audio downloaded and checked (or its text spoken), the announcement of an exercise or
a test first, then the content `repeat` times; the core hears when it started and how it ended.
"""

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import aiomqtt

from devices.agent.config import AgentConfig
from devices.agent.fetch import AudioCache, FetchFailed
from devices.agent.link import TerminalLink
from devices.agent.player import PlaybackFailed, Player
from devices.agent.readings import host_readings, signal_dbm
from devices.agent.state import AnsweredFile
from devices.backoff import reconnect_delay
from devices.broker import BrokerAddress
from devices.messages import Command, Heartbeat, announcement, encode, now_utc
from devices.terminal_core import Step, TerminalCore
from devices.topics import TopicScheme

log = logging.getLogger(__name__)


class Agent:
    """A real terminal: `run()` until cancelled (SIGTERM), then the `offline` goodbye."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        broker = BrokerAddress.from_url(
            config.broker, ca_file=config.ca_file, cert_file=config.cert_file, key_file=config.key_file
        )
        self._topics = TopicScheme(config.topic_prefix)
        self._link = TerminalLink(
            config.terminal_id,
            config.region,
            self._topics,
            broker.host,
            broker.port,
            broker.tls,
            username=config.username or config.terminal_id,
            password=config.mqtt_password(),
            firmware=config.firmware,
            heartbeat_interval_s=config.heartbeat_interval_s,
        )
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.core = TerminalCore(config.terminal_id, config.keys(), window=config.window)
        self._answered = AnsweredFile(config.state_dir)
        self.core.recall(self._answered.load())
        self._audio = AudioCache(
            config.state_dir / "audio", config.download_timeout_s, config.cache_limit_bytes
        )
        self._player = Player(config, config.state_dir / "speech")
        self._client: aiomqtt.Client | None = None
        self._playing: tuple[str, asyncio.Task[None]] | None = None
        self._volume: int | None = None
        self._saving = asyncio.Lock()

    async def run(self) -> None:
        """Stay connected, reconnecting with backoff and jitter; when cancelled, stop the player
        and say goodbye."""
        try:
            await self._stay_connected()
        finally:
            await self._stop_playing()

    async def _stay_connected(self) -> None:
        attempt = 0
        while True:
            try:
                async with self._link.client() as client:
                    self._client = client
                    await self._link.announce(client)
                    log.info("connected to %s:%s", self._link.host, self._link.port)
                    attempt = 0
                    beats = asyncio.create_task(self._heartbeats(client))
                    try:
                        async for message in client.messages:
                            await self._carry_out(self.core.on_payload(bytes(message.payload), now_utc()))
                    except asyncio.CancelledError:
                        await self._link.goodbye(client)
                        raise
                    finally:
                        beats.cancel()
                        self._client = None
            except aiomqtt.MqttError as exc:
                self._client = None
                attempt += 1
                delay = reconnect_delay(attempt)
                log.warning("broker unavailable (%s); trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _carry_out(self, step: Step) -> None:
        if step.acks:
            # Saved before anyone hears of it: an answer the controller saw is never forgotten.
            # One save at a time, each of what the core remembers then, so the newest is last.
            async with self._saving:
                await asyncio.to_thread(self._answered.save, self.core.remembered())
        client = self._client
        for ack in step.acks:
            log.info("command %s: %s%s", ack.command_id, ack.stage, f" ({ack.reason})" if ack.reason else "")
            if client is None:
                continue
            try:
                await client.publish(self._topics.terminal_ack(self.config.terminal_id), encode(ack), qos=1)
            except aiomqtt.MqttError as exc:
                # The controller sends again to a terminal that comes back without having answered,
                # and the core answers a copy with its last ack: that is how this one gets through.
                log.warning("ack for %s not published (%s)", ack.command_id, exc)
        if step.stop is not None and self._playing is not None and self._playing[0] == step.stop:
            await self._stop_playing()
        if step.start is not None:
            command = step.start
            self._playing = (command.id, asyncio.create_task(self._play(command)))

    async def _stop_playing(self) -> None:
        """End the player (its process with it) before anything else sounds."""
        if self._playing is None:
            return
        _, task = self._playing
        self._playing = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _play(self, command: Command) -> None:
        try:
            content = await self._content(command)
            said = announcement(command.status, command.content.language)
            preamble = None if said is None else await self._player.speech(said, command.content.language)
            await self._player.set_volume(command.volume)
            if command.volume is not None and self.config.volume_command is not None:
                self._volume = command.volume
        except PlaybackFailed as exc:
            await self._carry_out(self.core.on_failed(command.id, now_utc(), exc.detail))
            return
        await self._carry_out(self.core.on_started(command.id, now_utc()))
        try:
            if preamble is not None:
                await self._player.play(preamble)
            for _ in range(command.repeat):
                await self._player.play(content)
        except PlaybackFailed as exc:
            step = self.core.on_failed(command.id, now_utc(), exc.detail)
        else:
            step = self.core.on_finished(command.id, now_utc())
        if self._playing is not None and self._playing[0] == command.id:
            self._playing = None
        await self._carry_out(step)

    async def _content(self, command: Command) -> Path:
        """The file to play: the audio, downloaded and checked, else the text spoken."""
        content = command.content
        if content.audio is not None:
            try:
                return await self._audio.get(content.audio)
            except FetchFailed as exc:
                if content.text is None:
                    raise PlaybackFailed(exc.detail) from None
                log.warning("command %s: %s; speaking its text instead", command.id, exc.detail)
        assert content.text is not None
        return await self._player.speech(content.text, content.language)

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        topic = self._topics.terminal_heartbeat(self.config.terminal_id)
        while True:
            beat = Heartbeat(
                terminal_id=self.config.terminal_id,
                at=now_utc(),
                firmware=self.config.firmware,
                volume=self._volume,
                signal_dbm=await signal_dbm(self.config.signal_command),
                playing=self.core.current.id if self.core.current else None,
                clock_skew_s=self.core.clock_skew_s,
                **await asyncio.to_thread(host_readings),
            )
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(topic, encode(beat), qos=0)
            await asyncio.sleep(self.config.heartbeat_interval_s)


async def run_agent(config: AgentConfig) -> int:
    """Run until SIGTERM or SIGINT, then say goodbye and return 0; 2 if a file the configuration
    names cannot be used (the key set, the password file, the CA)."""
    try:
        agent = Agent(config)
    except (OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0
