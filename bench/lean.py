"""Lean simulated terminals: many paho-mqtt clients driven by one selector loop in one thread.

Each terminal is what `simulator.terminal.SimulatedTerminal` is, minus asyncio and aiomqtt:

- its own paho-mqtt `Client` (MQTT 3.1.1, `clean_session=False`, keepalive 60 s), so its own TCP
  connection and broker session, with the retained will `lost` on its status topic;
- on connect it subscribes (QoS 1) to its own command topic and its region's and every wider
  region's, then publishes its retained birth `online` (QoS 1);
- every payload on a command topic goes to its own `devices.terminal_core.TerminalCore`, and it
  carries out the `Step` the core answers: acknowledgements published QoS 1 on its ack topic,
  playback started after a start delay (`playing`, then `completed` after the playback), playback
  stopped on a cancel or pre-emption;
- heartbeats (QoS 0) as the simulator sends them; on stop, a retained `offline` goodbye.

What is left out is the per-client cost of aiomqtt (an asyncio task and futures per operation, a
message queue and iterator per client): paho's own `loop_read`/`loop_write`/`loop_misc` are called
from a `selectors` loop over all sockets, with a timer heap for playback and heartbeats. The
protocol work (MQTT packets by paho, payloads by devices.messages) is the same, with one saving:
`share_command_decoding` lets the terminals of one process share the decoding of identical
command bytes (see there).
"""

import contextlib
import functools
import heapq
import itertools
import logging
import random
import selectors
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import devices.terminal_core
from devices.backoff import reconnect_delay
from devices.messages import (
    Amplifier,
    Cancel,
    Command,
    Heartbeat,
    Presence,
    Speaker,
    Supply,
    TerminalStatus,
    encode,
    now_utc,
)
from devices.signing import KeySet, Refusal
from devices.terminal_core import Step, TerminalCore
from devices.topics import TopicScheme
from simulator.fleet import Behaviour, SimulatedSpec

log = logging.getLogger(__name__)

MISC_INTERVAL_S = 1.0


def share_command_decoding(size: int = 64) -> None:
    """Memoise `decode_command` for every TerminalCore of this process, by payload bytes.

    A region command reaches thousands of simulated terminals of one process as the same bytes;
    decoding is a pure function of them and the result is an immutable (frozen) model, so each
    terminal gets exactly what decoding them itself would give, and its TerminalCore still
    decides everything else (duplicates, expiry, priority, its acknowledgements). A payload that
    does not decode raises every time (exceptions are not cached). Real terminals each decode on
    their own CPU; here that would be 10,000 identical decodings (about 0.25 CPU-s) on the cores
    the controller under test needs.
    """
    module = devices.terminal_core
    decode = getattr(module, "decode_command")  # noqa: B009 -- not re-exported, so mypy must not look
    if not hasattr(decode, "__wrapped__"):
        setattr(module, "decode_command", functools.lru_cache(maxsize=size)(decode))  # noqa: B010


def share_command_verification(size: int = 64) -> None:
    """Let every TerminalCore of this process share the signature check of one decoded command.

    With `share_command_decoding`, the terminals of a process that receive the same command bytes
    get the same (immutable) decoded command; whether its signature verifies against a key set
    depends on nothing else, so it is checked once per command object and key set, and the
    result reused. The freshness check (`sent_at` within the window of each terminal's clock,
    `Refusal.STALE`) is still made by every terminal at its own `now`, so each gets exactly what
    `devices.signing.refusal` would answer. This is the simulation's saving, not the system's: a
    real terminal verifies on its own CPU; here 10,000 Ed25519 verifications of the same bytes
    (about half of a lean terminal's CPU per command, measured) would run on the two cores the
    controller and the broker need.
    """
    module = devices.terminal_core
    check = getattr(module, "refusal")  # noqa: B009 -- not re-exported, so mypy must not look
    if hasattr(check, "shared"):
        return
    memo: OrderedDict[int, tuple[object, KeySet, Refusal | None]] = OrderedDict()

    def shared(message: Command | Cancel, keys: KeySet, now: datetime, window: timedelta) -> Refusal | None:
        if message.sent_at is None:
            return check(message, keys, now, window)  # type: ignore[no-any-return]
        entry = memo.get(id(message))
        if entry is None or entry[0] is not message or entry[1] is not keys:
            # At its own sending time a message is never stale: this is every other answer.
            entry = (message, keys, check(message, keys, message.sent_at, window))
            memo[id(message)] = entry
            while len(memo) > size:
                memo.popitem(last=False)
        if entry[2] is not None:
            return entry[2]
        return Refusal.STALE if abs(now - message.sent_at) > window else None

    shared.shared = True  # type: ignore[attr-defined]
    setattr(module, "refusal", shared)  # noqa: B010


class Reactor:
    """A selector over the clients' sockets and a heap of timers, run in one thread."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.clients: list[LeanTerminal] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def watch(self, terminal: "LeanTerminal", sock: Any) -> None:
        self.selector.register(sock, selectors.EVENT_READ, terminal)
        terminal.sock = sock
        terminal.watching_write = False

    def unwatch(self, terminal: "LeanTerminal", sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)
        terminal.sock = None

    def flush(self, terminal: "LeanTerminal") -> None:
        """Write what the client has queued; watch for writability only while the socket is full."""
        client = terminal.client
        if client.want_write():
            client.loop_write()
        sock = terminal.sock
        if sock is None:
            return
        wants = client.want_write()
        if wants != terminal.watching_write:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants else 0)
            self.selector.modify(sock, events, terminal)
            terminal.watching_write = wants

    def run_once(self, timeout: float) -> None:
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
        for key, mask in self.selector.select(timeout):
            terminal: LeanTerminal = key.data
            client = terminal.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and terminal.sock is not None:
                client.loop_write()
            self.flush(terminal)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()

    def misc(self) -> None:
        """Keepalive pings and timeouts of every client (paho's loop_misc)."""
        for terminal in self.clients:
            if terminal.sock is not None:
                terminal.client.loop_misc()
                self.flush(terminal)


class LeanTerminal:
    """One simulated terminal on its own paho-mqtt client; see the module docstring."""

    def __init__(
        self,
        spec: SimulatedSpec,
        host: str,
        port: int,
        topics: TopicScheme,
        behaviour: Behaviour,
        keys: KeySet,
        reactor: Reactor,
        on_first_command: Callable[[str], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self._host = host
        self._port = port
        self._topics = topics
        self._behaviour = behaviour
        self._reactor = reactor
        self._on_first_command = on_first_command
        self._rng = random.Random(f"{seed}-{spec.terminal_id}")
        self.core = TerminalCore(spec.terminal_id, keys)
        self.sock: Any = None
        self.watching_write = False
        self.connected = False
        self.stopping = False
        self._session = 0
        self._attempt = 0
        self._started = time.monotonic()
        self._playing: str | None = None
        self._heartbeating = False
        self._ack_topic = topics.terminal_ack(spec.terminal_id)
        self._status_topic = topics.terminal_status(spec.terminal_id)
        self._goodbye_mid: int | None = None
        self.goodbye_done = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=spec.terminal_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        self.client.on_socket_open = lambda _c, _u, sock: reactor.watch(self, sock)
        self.client.on_socket_close = lambda _c, _u, sock: reactor.unwatch(self, sock)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_publish = self._published
        reactor.clients.append(self)

    def connect(self) -> None:
        self._session = int(time.time() * 1000)
        self.client.will_set(self._status_topic, self._status(Presence.LOST), qos=1, retain=True)
        try:
            if self._attempt == 0:
                self.client.connect(self._host, self._port, keepalive=60)
            else:
                self.client.reconnect()
        except OSError as exc:
            self._retry(exc)
            return
        self._reactor.flush(self)

    def goodbye(self) -> None:
        """Publish the retained `offline` status; `goodbye_done` once the broker has it."""
        self.stopping = True
        self._playing = None
        if not self.connected:
            self.goodbye_done = True
            return
        info = self.client.publish(self._status_topic, self._status(Presence.OFFLINE), qos=1, retain=True)
        self._goodbye_mid = info.mid
        self._reactor.flush(self)

    def disconnect(self) -> None:
        if self.sock is not None:
            self.client.disconnect()
            self._reactor.flush(self)

    # --- paho callbacks (called from loop_read/loop_misc on the reactor's thread) ---

    def _connected(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("%s: connection refused: %s", self.spec.terminal_id, reason)
            return
        topics = self._topics.terminal_subscriptions(self.spec.terminal_id, self.spec.region)
        client.subscribe([(topic, 1) for topic in topics])
        client.publish(self._status_topic, self._status(Presence.ONLINE), qos=1, retain=True)
        self.connected = True
        self._attempt = 0
        if not self._heartbeating:
            self._heartbeating = True
            interval = self._behaviour.heartbeat_interval_s
            self._reactor.call_later(self._rng.uniform(0, min(interval, 5)), self._heartbeat)

    def _disconnected(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self.connected = False
        if not self.stopping:
            self._retry(reason)

    def _published(self, _c: mqtt.Client, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        if mid == self._goodbye_mid:
            self.goodbye_done = True

    def _message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if self._on_first_command is not None:
            self._on_first_command(self.spec.terminal_id)
        self._carry_out(self.core.on_payload(bytes(message.payload), now_utc()))

    # --- behaviour, as simulator.terminal.SimulatedTerminal ---

    def _retry(self, why: object) -> None:
        self._attempt += 1
        delay = reconnect_delay(self._attempt, self._rng)
        log.debug("%s: broker unavailable (%s); retry in %.1f s", self.spec.terminal_id, why, delay)
        self._reactor.call_later(delay, self.connect)

    def _carry_out(self, step: Step) -> None:
        for ack in step.acks:
            self.client.publish(self._ack_topic, encode(ack), qos=1)
        if step.stop is not None:
            self._playing = None
        if step.start is not None:
            command = step.start
            self._playing = command.id
            self._reactor.call_later(
                self._behaviour.start_delay(self._rng), lambda: self._started_playing(command)
            )
        self._reactor.flush(self)

    def _started_playing(self, command: Command) -> None:
        if self._playing != command.id or self.stopping:
            return
        self._carry_out(self.core.on_started(command.id, now_utc()))
        length = self._behaviour.playback(command.content) * command.repeat
        self._reactor.call_later(length, lambda: self._finished_playing(command))

    def _finished_playing(self, command: Command) -> None:
        if self._playing != command.id or self.stopping:
            return
        self._playing = None
        self._carry_out(self.core.on_finished(command.id, now_utc()))

    def _heartbeat(self) -> None:
        if self.stopping:
            return
        if self.connected:
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
            self.client.publish(self._topics.terminal_heartbeat(self.spec.terminal_id), encode(beat), qos=0)
            self._reactor.flush(self)
        interval = self._behaviour.heartbeat_interval_s
        self._reactor.call_later(interval * self._rng.uniform(0.9, 1.1), self._heartbeat)

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


class LeanFleet:
    """Lean terminals in this thread: `start` connects them all, `run_until` serves them."""

    def __init__(
        self,
        specs: list[SimulatedSpec],
        host: str,
        port: int,
        topics: TopicScheme,
        behaviour: Behaviour,
        keys: KeySet,
        on_first_command: Callable[[str], None] | None = None,
        connect_concurrency: int = 200,
    ) -> None:
        self.reactor = Reactor()
        self.terminals = [
            LeanTerminal(spec, host, port, topics, behaviour, keys, self.reactor, on_first_command)
            for spec in specs
        ]
        self._concurrency = connect_concurrency
        self._last_misc = time.monotonic()

    def step(self, timeout: float) -> None:
        self.reactor.run_once(timeout)
        now = time.monotonic()
        if now - self._last_misc >= MISC_INTERVAL_S:
            self._last_misc = now
            self.reactor.misc()

    def start(self, timeout: float, stop: Callable[[], bool]) -> bool:
        """Connect every terminal (at most `connect_concurrency` still connecting at once); True when
        all are connected within `timeout` s, False on timeout or `stop()`."""
        deadline = time.monotonic() + timeout
        waiting = list(reversed(self.terminals))
        connecting: list[LeanTerminal] = []
        while waiting or connecting:
            connecting = [t for t in connecting if not t.connected]
            while waiting and len(connecting) < self._concurrency:
                terminal = waiting.pop()
                terminal.connect()
                connecting.append(terminal)
            self.step(0.05)
            if stop() or time.monotonic() > deadline:
                return False
        return True

    def run_until(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.step(0.2)

    def stop(self, grace: float = 5.0) -> None:
        """Say goodbye (retained `offline`), wait up to `grace` s for the broker to take them, disconnect."""
        for terminal in self.terminals:
            terminal.goodbye()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not all(t.goodbye_done for t in self.terminals):
            self.step(0.05)
        for terminal in self.terminals:
            terminal.disconnect()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(t.sock is not None for t in self.terminals):
            self.step(0.05)
        for terminal in self.terminals:
            if terminal.sock is not None:
                with contextlib.suppress(OSError):
                    terminal.sock.close()

    @property
    def online(self) -> int:
        return sum(1 for t in self.terminals if t.connected)
