"""Lean simulated terminals: many MQTT connections driven by one selector loop in one thread.

Each terminal is what `simulator.terminal.SimulatedTerminal` is, minus asyncio and aiomqtt:

- its own TCP connection and broker session (MQTT 3.1.1, `clean_session=False`, keepalive 60 s),
  with the retained will `lost` on its status topic;
- on CONNACK it subscribes (QoS 1) to its own command topic and its region's and every wider
  region's, then publishes its retained birth `online` (QoS 1);
- every payload on a command topic goes to its own `devices.terminal_core.TerminalCore`, and it
  carries out the `Step` the core answers: acknowledgements published QoS 1 on its ack topic,
  playback started after a start delay (`playing`, then `completed` after the playback), playback
  stopped on a cancel or pre-emption;
- it acknowledges every QoS 1 PUBLISH it receives (PUBACK), and keeps its own QoS 1 publishes until
  the broker's PUBACK, sending them again (DUP) if it has to reconnect;
- heartbeats (QoS 0) as the simulator sends them; keepalive pings; on stop, a retained `offline`
  goodbye and a DISCONNECT.

What is left out is the per-client cost of a general MQTT library: the packets are built and cut by
`devices.mqtt_wire` (as in the controller's own client), each socket is read up to 64 KB at a
time, and what a terminal sends in answer to one read (its acknowledgement, then the PUBACK of the
command) leaves in one `send`; one `selectors` loop serves every socket of the process, with a
timer heap for playback and heartbeats. Two savings are the simulation's own, not a terminal's:
`share_command_decoding` and `share_command_verification` let the terminals of one process share
the decoding and the signature check of identical command bytes (see there).
"""

import contextlib
import errno
import functools
import heapq
import itertools
import logging
import random
import selectors
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

import devices.terminal_core
from devices import mqtt_wire
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
from devices.mqtt_wire import MalformedPacket, Will
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


KEEPALIVE_S = 60
READ_SIZE = 65536


TIMERS_PER_TURN = 64
"""due timers run between two looks at the sockets: thousands of playbacks that start at once must
not keep every other terminal of the process from reading its command meanwhile, as they would
not keep real terminals, each on its own CPU"""


class Reactor:
    """A selector over the terminals' sockets and a heap of timers, run in one thread."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.clients: list[LeanTerminal] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def run_once(self, timeout: float) -> None:
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
        for key, mask in self.selector.select(timeout):
            terminal: LeanTerminal = key.data
            if mask & selectors.EVENT_WRITE:
                terminal.writable()
            if mask & selectors.EVENT_READ and terminal.sock is not None:
                terminal.readable()
        now = time.monotonic()
        for _ in range(TIMERS_PER_TURN):
            if not self._timers or self._timers[0][0] > now:
                break
            _, _, fn = heapq.heappop(self._timers)
            fn()

    def misc(self) -> None:
        """Keepalive pings of every terminal."""
        now = time.monotonic()
        for terminal in self.clients:
            terminal.keepalive(now)


class LeanTerminal:
    """One simulated terminal on its own MQTT connection; see the module docstring."""

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
        self.sock: socket.socket | None = None
        self.connected = False
        self.stopping = False
        self._handshaking = False
        self._session = 0
        self._attempt = 0
        self._started = time.monotonic()
        self._playing: str | None = None
        self._heartbeating = False
        self._ack_topic = topics.terminal_ack(spec.terminal_id)
        self._status_topic = topics.terminal_status(spec.terminal_id)
        self._goodbye_id: int | None = None
        self.goodbye_done = False
        self._in = bytearray()
        self._out = bytearray()
        self._watching_write = False
        self._last_id = 0
        self._unacked: dict[int, bytes] = {}
        """QoS 1 publishes the broker has not acknowledged yet, by packet id"""
        self._last_out = 0.0
        self._ping_sent: float | None = None
        reactor.clients.append(self)

    # --- the connection ---

    def connect(self) -> None:
        self._session = int(time.time() * 1000)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex((self._host, self._port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._retry(OSError(code, "connect"))
            return
        self.sock = sock
        self._handshaking = True
        self._in.clear()
        self._out.clear()
        self._ping_sent = None
        will = Will(self._status_topic, self._status(Presence.LOST), qos=1, retain=True)
        self._out += mqtt_wire.connect_packet(
            self.spec.terminal_id, keepalive=KEEPALIVE_S, clean_session=False, will=will
        )
        for packet in self._unacked.values():  # again, with DUP, as MQTT asks
            self._out += bytes((packet[0] | 0x08,)) + packet[1:]
        self._reactor.selector.register(sock, selectors.EVENT_WRITE, self)
        self._watching_write = True

    def readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost("closed by the broker")
            return
        if self._in:
            self._in += data
            data = bytes(self._in)
        try:
            packets, used = mqtt_wire.split(data)
            acks = self._handle(packets)
        except MalformedPacket as exc:
            self._lost(exc)
            return
        self._in[:] = data[used:]
        if acks:
            self._out += acks
        self.flush()

    def writable(self) -> None:
        if self._handshaking:
            self._handshaking = False
            assert self.sock is not None
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._lost(OSError(code, "connect"))
                return
        self.flush()

    def flush(self) -> None:
        """Send what is queued; watch for writability only while the socket is full."""
        sock = self.sock
        if sock is None or self._handshaking:
            return
        if self._out:
            try:
                sent = sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            del self._out[:sent]
            self._last_out = time.monotonic()
        wants = bool(self._out)
        if wants != self._watching_write:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants else 0)
            self._reactor.selector.modify(sock, events, self)
            self._watching_write = wants

    def keepalive(self, now: float) -> None:
        if self.sock is None or self._handshaking:
            return
        if self._ping_sent is not None and now - self._ping_sent > KEEPALIVE_S:
            self._lost("no PINGRESP")
        elif self._ping_sent is None and now - self._last_out >= KEEPALIVE_S / 2:
            self._ping_sent = now
            self._out += mqtt_wire.PINGREQ_PACKET
            self.flush()

    def _handle(self, packets: list[mqtt_wire.Packet]) -> bytearray:
        acks = bytearray()
        for kind, flags, body in packets:
            if kind == mqtt_wire.PUBLISH:
                message = mqtt_wire.read_publish(flags, body)
                self._message(message.payload)
                if message.qos:
                    acks += mqtt_wire.puback_packet(message.packet_id)
            elif kind == mqtt_wire.PUBACK:
                packet_id = mqtt_wire.read_packet_id(body)
                self._unacked.pop(packet_id, None)
                if packet_id == self._goodbye_id:
                    self.goodbye_done = True
            elif kind == mqtt_wire.CONNACK:
                self._connected(body[1] if len(body) >= 2 else -1)
            elif kind == mqtt_wire.PINGRESP:
                self._ping_sent = None
            elif kind != mqtt_wire.SUBACK:
                raise MalformedPacket(f"unexpected packet type {kind}")
        return acks

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Queue a PUBLISH (sent at the next flush); its packet id at QoS 1."""
        if not qos:
            if self.connected:
                self._out += mqtt_wire.publish_packet(topic, payload, qos=0, retain=retain)
            return 0
        packet_id = self._last_id
        while True:
            packet_id = packet_id % 65535 + 1
            if packet_id not in self._unacked:
                break
        self._last_id = packet_id
        packet = mqtt_wire.publish_packet(topic, payload, qos=1, retain=retain, packet_id=packet_id)
        self._unacked[packet_id] = packet
        if self.connected:
            self._out += packet
        return packet_id

    def goodbye(self) -> None:
        """Publish the retained `offline` status; `goodbye_done` once the broker has it."""
        self.stopping = True
        self._playing = None
        if not self.connected:
            self.goodbye_done = True
            return
        self._goodbye_id = self._publish(
            self._status_topic, self._status(Presence.OFFLINE), qos=1, retain=True
        )
        self.flush()

    def disconnect(self) -> None:
        if self.sock is not None:
            self._out += mqtt_wire.DISCONNECT_PACKET
            self.flush()
            self._close()

    def _close(self) -> None:
        sock, self.sock = self.sock, None
        self.connected = False
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._reactor.selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _lost(self, why: object) -> None:
        self._close()
        if not self.stopping:
            self._retry(why)

    def _connected(self, code: int) -> None:
        if code != 0:
            log.warning(
                "%s: connection refused: %s", self.spec.terminal_id, mqtt_wire.CONNACK_CODES.get(code, code)
            )
            self._lost(f"refused ({code})")
            return
        topics = self._topics.terminal_subscriptions(self.spec.terminal_id, self.spec.region)
        self._last_id = self._last_id % 65535 + 1
        self._out += mqtt_wire.subscribe_packet(self._last_id, [(topic, 1) for topic in topics])
        self.connected = True
        self._attempt = 0
        self._publish(self._status_topic, self._status(Presence.ONLINE), qos=1, retain=True)
        if not self._heartbeating:
            self._heartbeating = True
            interval = self._behaviour.heartbeat_interval_s
            self._reactor.call_later(self._rng.uniform(0, min(interval, 5)), self._heartbeat)

    def _message(self, payload: bytes) -> None:
        if self._on_first_command is not None:
            self._on_first_command(self.spec.terminal_id)
        self._carry_out(self.core.on_payload(payload, now_utc()), flush=False)

    # --- behaviour, as simulator.terminal.SimulatedTerminal ---

    def _retry(self, why: object) -> None:
        self._attempt += 1
        delay = reconnect_delay(self._attempt, self._rng)
        log.debug("%s: broker unavailable (%s); retry in %.1f s", self.spec.terminal_id, why, delay)
        self._reactor.call_later(delay, self.connect)

    def _carry_out(self, step: Step, flush: bool = True) -> None:
        for ack in step.acks:
            self._publish(self._ack_topic, encode(ack), qos=1)
        if step.stop is not None:
            self._playing = None
        if step.start is not None:
            command = step.start
            self._playing = command.id
            self._reactor.call_later(
                self._behaviour.start_delay(self._rng), lambda: self._started_playing(command)
            )
        if flush:
            self.flush()

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
            self._publish(self._topics.terminal_heartbeat(self.spec.terminal_id), encode(beat), qos=0)
            self.flush()
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
            terminal._close()

    @property
    def online(self) -> int:
        return sum(1 for t in self.terminals if t.connected)
