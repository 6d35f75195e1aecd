"""The controller: the parts wired together, started and stopped in order.

Start: schema and bundled regions, memory from the database (terminals, live broadcasts), the
embedded broker if no broker is configured, then the MQTT session, the batched writer and the
expiry sweep. Stop, in uvicorn's order (stop taking work, drain, then close): refuse new
broadcasts, publish the controller's `offline` status (so terminals see a goodbye, not a will),
stop the tasks, let the writer finish and flush the rest, then close. Each step runs even if an
earlier one failed, so a database error at shutdown cannot leave the MQTT session open.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session

from controller.accounts import Principal
from controller.alarms import AlarmTracker, Thresholds, open_alarms
from controller.approvals import awaiting, held_request, lapse_overdue, needs_approval, reject
from controller.audit import AuditEntry, append, commit_entry
from controller.broadcasts import (
    BroadcastNotFound,
    BroadcastRejected,
    BroadcastRequest,
    Provenance,
    Target,
    accept,
    build_command,
    live_broadcasts,
    new_broadcast_id,
    open_lineage,
    record_cancel,
    updatable,
)
from controller.bus import MqttBus
from controller.cap.intake import CapIntake
from controller.cap.poller import CapPoller
from controller.credentials import mosquitto_hash, new_secret
from controller.db import init_schema, make_engine
from controller.delivery import DeliveryState
from controller.dispatch import Dispatcher
from controller.embedded_broker import EmbeddedBroker
from controller.media import MediaRejected, MediaStore
from controller.metrics import Metrics
from controller.models import SENDING_STATES, Broadcast, BroadcastState, Programme, Schedule
from controller.presence import UNKNOWN, PresenceTracker
from controller.programmes import ProgrammeNotFound, content_of, get_programme
from controller.regions import ensure_bundled_regions
from controller.scheduler import Claim, Clock, Scheduler
from controller.schedules import request_for
from controller.settings import Settings
from controller.signing_keys import SigningKeys
from controller.speech import Speech, SpeechEngine, SpeechUnavailable
from controller.telemetry import TelemetrySampler, prune_telemetry
from controller.terminals import (
    Credentials,
    Registration,
    TerminalSpec,
    all_terminals,
    decommission,
    needing_credentials,
    register_terminals,
    reissue_credentials,
)
from controller.tokens import signing_key
from controller.tracker import DeliveryTracker, LiveBroadcast
from controller.writer import DbWriter
from devices.broker import BrokerAddress
from devices.errors import ProtocolError
from devices.messages import (
    Ack,
    AudioRef,
    Cancel,
    Command,
    ControllerStatus,
    Presence,
    TerminalStatus,
    decode,
    decode_heartbeat,
    encode,
    is_command_id,
    now_utc,
)
from devices.priority import BroadcastKind
from devices.topics import TerminalChannel
from devices.voices import SpeechFailed

log = logging.getLogger(__name__)

# A terminal still playing at expiry may finish; after this long it is marked expired too.
PLAYBACK_GRACE = timedelta(minutes=10)
_REJECTION_LOG_INTERVAL_S = 60.0
APPROVAL_CHECK_INTERVAL_S = 5.0
TELEMETRY_PRUNE_INTERVAL_S = 3600.0


class NotAccepting(RuntimeError):
    """The controller is shutting down and takes no new broadcasts."""


class Controller:
    """One controller process."""

    def __init__(
        self, settings: Settings, metrics: Metrics | None = None, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.metrics = metrics or Metrics()
        self.engine = make_engine(settings.database_url)
        self.writer = DbWriter(
            self.engine, self.metrics, interval=settings.ack_batch_interval_s, max_rows=settings.ack_batch_max
        )
        self.tracker = DeliveryTracker(
            self.writer,
            self.metrics,
            playback_grace=PLAYBACK_GRACE,
            retry_after=settings.retry_after_s,
            retry_max_interval=settings.retry_max_interval_s,
            clock_tolerance=timedelta(seconds=settings.ack_clock_tolerance_s),
        )
        # Looked up once: a label lookup per message is a measurable share of handling a heartbeat.
        self._received = {c: self.metrics.mqtt_received.labels(c.value) for c in TerminalChannel}
        self.presence = PresenceTracker(
            self.writer,
            self.metrics,
            misses=settings.heartbeat_misses,
            flap_changes=settings.flap_changes,
            flap_window=timedelta(seconds=settings.flap_window_s),
        )
        self.alarms = AlarmTracker(
            self.writer,
            self.metrics,
            Thresholds(settings.fault_low_signal_dbm, settings.fault_high_temperature_c),
        )
        self.telemetry = TelemetrySampler(self.writer, timedelta(seconds=settings.telemetry_sample_s))
        self.keys = SigningKeys(settings.signing_key_dir)
        self.media = MediaStore(settings.media_dir)
        self.speech = SpeechEngine(self.media, settings.tts_command)
        self.cap = CapIntake(self)
        self.cap_poller = CapPoller(self.cap, settings)
        self.scheduler = Scheduler(self.writer, self._play_scheduled, self.release, self.cancel, clock)
        self.broker: EmbeddedBroker | None = None
        self.bus: MqttBus | None = None
        self.dispatcher: Dispatcher | None = None
        self.accepting = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failed_tasks: list[str] = []
        self._background: set[asyncio.Task[None]] = set()
        self._rejections_logged: dict[str, float] = {}
        self.signing_key = ""
        """the access-token signing key, loaded at start"""
        self._approvals_checked = 0.0
        self._telemetry_pruned: float | None = None

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.connected

    async def start(self, *, connect_timeout: float | None = 10.0) -> None:
        """Start everything; wait up to `connect_timeout` s for the broker (None: don't wait)."""
        await asyncio.to_thread(init_schema, self.engine)
        secret = self.settings.auth_secret
        self.signing_key = secret.get_secret_value() if secret else await self.writer.call(signing_key)
        loaded = await self.writer.call(ensure_bundled_regions)
        if loaded:
            log.info("loaded %d bundled administrative regions (咸宁市)", loaded)
        self.presence.load(await self.writer.call(all_terminals))
        self.alarms.load(await self.writer.call(open_alarms))
        staged: list[Broadcast] = []
        for broadcast, states, owed_cancel in await self.writer.call(live_broadcasts):
            self.tracker.track(_live(broadcast, states, owed_cancel), now_utc())
            if _staged_by_someone(broadcast):
                staged.append(broadcast)
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
        await asyncio.to_thread(self.keys.ensure, now_utc())
        self.dispatcher = Dispatcher(self.bus, self.tracker, self.topics, self.metrics, self.keys)
        for broadcast in staged:
            assert broadcast.not_before is not None
            self._spawn(self._release_at(broadcast.id, broadcast.not_before))
        self._run("mqtt", self.bus.run())
        self._run("db-writer", self.writer.run())
        self._run("sweep", self._sweep())
        self.accepting = True
        self._run("scheduler", self.scheduler.run())
        if self.settings.cap_feeds:
            self._run("cap-feeds", self.cap_poller.run())
        log.info("text to speech: %s", self.speech.describe())
        if self.settings.public_url is None and self.settings.http_host in ("0.0.0.0", "::"):
            log.warning(
                "terminals are told to download audio from %s, which is their own loopback: "
                "set CUNXIANG_PUBLIC_URL to the address they reach this controller at",
                self.settings.media_url,
            )
        if connect_timeout is not None:
            try:
                await self.bus.wait_connected(connect_timeout)
            except TimeoutError:
                log.warning(
                    "no MQTT broker at %s yet; broadcasts are stored and sent once it answers", address
                )

    async def stop(self) -> None:
        # The scheduler first, so no run is claimed and then refused because we stopped accepting.
        scheduler = self._tasks.pop("scheduler", None)
        if scheduler is not None:
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
        self.accepting = False
        if self.bus is not None:
            await _step("say goodbye on MQTT", self.bus.close())
        writer = self._tasks.pop("db-writer", None)
        tasks = list(self._tasks.values()) + list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await _step("write the last acknowledgements", self.writer.stop())
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)
        await _step("close the database writer", self.writer.close())
        if self.broker is not None:
            await _step("stop the embedded broker", asyncio.to_thread(self.broker.stop))
        self.engine.dispose()

    async def submit(
        self,
        request: BroadcastRequest,
        updates: str | None = None,
        not_before: datetime | None = None,
        claim: Claim | None = None,
        by: Principal | None = None,
        correction_of: str | None = None,
    ) -> Broadcast:
        """Accept, persist and publish a broadcast; raises BroadcastRejected or NotAccepting.

        With `updates`, the broadcast is an update of that one (which it supersedes if it is still
        going); raises BroadcastNotFound, or BroadcastConflict if that one was cancelled or updated.
        With `not_before` in the future it is staged: stored and tracked now, and published at that
        time by `release` (or, after a restart, by the sweep), so the database work of a scheduled
        run is done before its time, not at it.
        `by` is who asked (None: the scheduler); a live level I/II alert from anyone is held for a
        second person's approval (`approve`), unless it corrects a false alarm (`correction_of`).
        """
        if not self.accepting or self.dispatcher is None:
            raise NotAccepting("the controller is not accepting broadcasts")
        request = await self._spoken(await self._programme_content(request))
        hold = (
            by is not None
            and correction_of is None
            and needs_approval(request, self.settings.approval_levels)
        )
        if updates is not None:
            if not is_command_id(updates):
                raise BroadcastNotFound(f"no broadcast {updates!r}")
            await self.writer.flush()
        now = now_utc()

        def store(session: Session) -> tuple[Broadcast, Target]:
            earlier = updatable(session, updates) if updates is not None else None
            ended = [b.id for b in open_lineage(session, earlier)] if earlier is not None else []
            command = build_command(
                request,
                broadcast_id=new_broadcast_id(now),
                county_region=self.settings.county_region,
                now=now,
                max_expires_in=self.settings.max_expires_in_s,
                supersedes=ended or None,
                not_before=not_before,
            )
            staged = not_before if not_before is not None and not_before > now else None
            if claim is not None:
                claim(session, command.id)
            provenance = Provenance(
                created_by=by.name if by is not None else None,
                correction_of=correction_of,
                approval_deadline=now + timedelta(seconds=self.settings.approval_timeout_s) if hold else None,
            )
            if by is not None:
                action = (
                    "broadcast.correct"
                    if correction_of
                    else "broadcast.update"
                    if updates
                    else "broadcast.create"
                )
                append(session, _audit(by, action, command, request, correction_of or updates, hold), now)
            return accept(session, request, command, earlier, staged, provenance)

        broadcast, target = await self.writer.call(store)
        if broadcast.state == BroadcastState.AWAITING_APPROVAL:
            log.info("broadcast %s (%d terminals) awaits approval", broadcast.id, broadcast.terminals)
            return broadcast
        await self._launch(broadcast, target, now)
        if _staged_by_someone(broadcast):
            assert broadcast.not_before is not None
            self._spawn(self._release_at(broadcast.id, broadcast.not_before))
        return broadcast

    async def approve(self, broadcast_id: str, by: Principal) -> Broadcast:
        """A second person approves a held broadcast: built afresh (issued now; an `expires_in`
        counts from now) for the terminals its target reaches now, then sent. Raises
        BroadcastNotFound, BroadcastConflict (not held, or lapsed), ApprovalRefused, BroadcastRejected."""
        if not self.accepting or self.dispatcher is None:
            raise NotAccepting("the controller is not accepting broadcasts")
        await self.writer.flush()
        now = now_utc()

        def store(session: Session) -> tuple[Broadcast, Target]:
            held = awaiting(session, broadcast_id, by, now)
            request = held_request(held)
            earlier = updatable(session, held.supersedes) if held.supersedes is not None else None
            ended = [b.id for b in open_lineage(session, earlier)] if earlier is not None else []
            command = build_command(
                request,
                broadcast_id=held.id,
                county_region=self.settings.county_region,
                now=now,
                max_expires_in=self.settings.max_expires_in_s,
                supersedes=ended or None,
            )
            append(session, by.audit("broadcast.approve", "broadcast", held.id, held.issuer_region), now)
            return accept(session, request, command, earlier, None, Provenance(held=held, decided_by=by.name))

        broadcast, target = await self.writer.call(store)
        await self._launch(broadcast, target, now)
        return broadcast

    async def reject(self, broadcast_id: str, by: Principal, reason: str | None) -> Broadcast:
        """An approver refuses a held broadcast; nothing is ever sent for it."""
        now = now_utc()
        return await self.writer.call(lambda session: reject(session, broadcast_id, by, reason, now))

    async def _launch(self, broadcast: Broadcast, target: Target, now: datetime) -> None:
        """Track a stored broadcast and publish it (or leave it staged until its time)."""
        assert self.dispatcher is not None
        self.metrics.broadcasts_accepted.labels(broadcast.kind).inc()
        live = _live(broadcast, dict.fromkeys(target.reached, DeliveryState.PENDING))
        self.tracker.track(live, now)
        log.info(
            "broadcast %s accepted: %s to %s, %d terminals%s",
            broadcast.id,
            broadcast.kind,
            ",".join(broadcast.regions + (broadcast.groups or []) + (broadcast.terminal_ids or [])[:5]),
            len(target.reached),
            f", updating {broadcast.supersedes}" if broadcast.supersedes is not None else "",
        )
        if broadcast.supersedes is not None:
            earlier_live = self.tracker.find(broadcast.supersedes)
            if earlier_live is not None and earlier_live.state in SENDING_STATES:
                self.tracker.supersede(earlier_live, now)
        await self.dispatcher.publish(live)
        broadcast.state = live.state

    async def release(self, broadcast_id: str) -> None:
        """Publish a staged broadcast now that its time has come."""
        live = self.tracker.find(broadcast_id)
        if live is not None and self.dispatcher is not None:
            await self.dispatcher.publish(live, its_time=True)

    async def _release_at(self, broadcast_id: str, when: datetime) -> None:
        """Publish a staged broadcast nobody else owns (a CAP alert effective later) at its time;
        the scheduler releases its own runs, and may withdraw them first."""
        await asyncio.sleep(max(0.0, (when - now_utc()).total_seconds()))
        live = self.tracker.find(broadcast_id)
        if live is not None and live.state is BroadcastState.ACCEPTED:
            await self.release(broadcast_id)

    async def speak(self, text: str, language: str, speed: int | None = None) -> Speech:
        """Speech for `text` from the offline engine (cached); raises SpeechUnavailable or SpeechFailed."""
        return await asyncio.to_thread(self.speech.speak, text, language, speed)

    async def _programme_content(self, request: BroadcastRequest) -> BroadcastRequest:
        """A request naming a programme, with the programme's audio and text as its content."""
        if request.programme_id is None:
            return request
        programme_id = request.programme_id
        try:
            programme = await self.writer.call(lambda session: get_programme(session, programme_id))
        except ProgrammeNotFound as exc:
            raise BroadcastRejected(str(exc)) from None
        content = content_of(programme, self.settings.media_url)
        return request.model_copy(
            update={
                "programme_id": None,
                "text": content.text if content.text or content.audio else programme.title,
                "language": content.language,
                "audio": content.audio,
            }
        )

    async def _spoken(self, request: BroadcastRequest) -> BroadcastRequest:
        """Text-only content with the offline engine's speech added, so every terminal sounds the
        same; without an engine, or if it fails, the text goes alone (terminals may speak it)."""
        if request.audio is not None or request.text is None or not self.speech.available:
            return request
        if not self.settings.speak_alerts:
            return request
        try:
            speech = await self.speak(request.text, request.language)
        except (SpeechFailed, SpeechUnavailable, MediaRejected) as exc:
            log.warning("sending text without speech: %s", exc)
            return request
        audio = AudioRef(
            url=f"{self.settings.media_url}/{speech.info.name}",
            size=speech.info.size,
            sha256=speech.info.sha256,
            duration_s=speech.info.duration_s,
        )
        return request.model_copy(update={"audio": audio})

    async def _play_scheduled(
        self, schedule: Schedule, programme: Programme, due: datetime, claim: Claim
    ) -> Broadcast:
        """One run of a schedule, as a programme broadcast expiring `expires_in_s` after its time,
        stored in the transaction that claims the run."""
        content = content_of(programme, self.settings.media_url)
        request = request_for(schedule, programme).model_copy(
            update={
                "audio": content.audio,
                "expires_in": None,
                "expires_at": due + timedelta(seconds=schedule.expires_in_s),
            }
        )
        return await self.submit(request, not_before=due, claim=claim)

    async def cancel(self, broadcast_id: str, by: Principal | None = None) -> Broadcast:
        """Cancel a broadcast: stored first, then sent to its regions (and later to stragglers).
        One awaiting approval is withdrawn, with nothing to send.

        Raises BroadcastNotFound, or BroadcastConflict when it is already over or being cancelled.
        """
        if not self.accepting or self.dispatcher is None:
            raise NotAccepting("the controller is not accepting commands")
        if not is_command_id(broadcast_id):
            raise BroadcastNotFound(f"no broadcast {broadcast_id!r}")
        await self.writer.flush()
        now = now_utc()

        def new_cancel(target: str) -> Cancel:
            return Cancel(
                id=new_broadcast_id(now),
                op="cancel",
                cancels=target,
                issuer_region=self.settings.county_region,
                issued_at=now,
            )

        def store(session: Session) -> list[tuple[Broadcast, Cancel | None]]:
            if by is not None:
                found = session.get(Broadcast, broadcast_id)
                region = found.issuer_region if found is not None else None
                append(session, by.audit("broadcast.cancel", "broadcast", broadcast_id, region), now)
            return record_cancel(session, broadcast_id, new_cancel)

        cancelled = await self.writer.call(store)
        for each, cancel in cancelled:
            live = self.tracker.find(each.id)
            if live is not None and cancel is not None:
                self.tracker.cancel(live, encode(cancel), cancel.id, now)
                log.info("broadcast %s cancelled by %s", each.id, cancel.id)
                await self.dispatcher.publish_cancel(live)
                each.state = live.state
        return cancelled[0][0]

    async def record(self, entry: AuditEntry) -> None:
        """Add an action to the audit trail (for actions whose own writes are already committed)."""
        now = now_utc()
        await self.writer.call(lambda session: commit_entry(session, entry, now))

    async def register(self, specs: list[TerminalSpec]) -> Registration:
        """Register terminals (raises TerminalsRejected) and start tracking their presence. New
        ones, and ones back in service, get MQTT credentials: their secrets are in the answer only."""
        needed = await self.writer.call(lambda session: needing_credentials(session, [s.id for s in specs]))
        issued_secrets = {terminal_id: new_secret() for terminal_id in needed}
        hashes = await asyncio.to_thread(lambda: {t: mosquitto_hash(s) for t, s in issued_secrets.items()})
        now = now_utc()
        issued, updated = await self.writer.call(
            lambda session: register_terminals(session, specs, hashes, now)
        )
        for spec in specs:
            self.presence.register(spec.id)
        credentials = [Credentials(terminal_id=t, username=t, secret=issued_secrets[t]) for t in issued]
        return Registration(created=len(issued), updated=updated, credentials=credentials)

    async def reissue_credentials(self, terminal_id: str) -> Credentials:
        """A new MQTT secret for a terminal in service (raises TerminalNotFound)."""
        secret = new_secret()
        secret_hash = await asyncio.to_thread(mosquitto_hash, secret)
        now = now_utc()
        await self.writer.call(lambda session: reissue_credentials(session, terminal_id, secret_hash, now))
        return Credentials(terminal_id=terminal_id, username=terminal_id, secret=secret)

    async def decommission(self, terminal_id: str) -> None:
        """Take a terminal out of service (raises TerminalNotFound); its history stays."""
        now = now_utc()
        await self.writer.flush()
        await self.writer.call(lambda session: decommission(session, terminal_id, now))
        self.presence.forget(terminal_id)
        self.alarms.forget(terminal_id, now)
        self.telemetry.forget(terminal_id)

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
            self._received[parsed.channel].inc()
            at = now_utc()
            if parsed.channel is TerminalChannel.ACK:
                ack = decode(Ack, payload)
                self._check_sender(parsed.terminal_id, ack.terminal_id)
                rejection = self.tracker.on_ack(ack, at)
            elif parsed.channel is TerminalChannel.STATUS:
                status = decode(TerminalStatus, payload)
                self._check_sender(parsed.terminal_id, status.terminal_id)
                outcome = self.presence.on_status(status, at)
                rejection = outcome.rejection
                if outcome.new_birth and self.dispatcher is not None:
                    self._spawn(self.dispatcher.terminal_returned(status.terminal_id))
            else:
                heartbeat, dropped = decode_heartbeat(payload)
                self._check_sender(parsed.terminal_id, heartbeat.terminal_id)
                for name in dropped:
                    self.metrics.heartbeat_fields_dropped.labels(name).inc()
                rejection = self.presence.on_heartbeat(heartbeat, at)
                if rejection is None:
                    self.alarms.on_heartbeat(heartbeat, at)
                    self.telemetry.on_heartbeat(heartbeat, at)
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

    def _on_connected(self) -> None:
        self.presence.heard_from_now_on(now_utc())
        if self.dispatcher is not None:
            self._spawn(self.dispatcher.resume())

    async def _sweep(self) -> None:
        """Expire what is due; retry first publishes the broker did not take, and overdue terminals."""
        while True:
            await asyncio.sleep(self.settings.expiry_sweep_interval_s)
            try:
                self.keys.refresh()
                await self._lapse_approvals()
                await self._prune_telemetry()
                self.tracker.sweep(now_utc())
                if self.connected:
                    self.presence.check(now_utc())
                if self.connected and self.dispatcher is not None:
                    await self.dispatcher.retry_unpublished()
                    self.dispatcher.forget_finished()
                    await self.dispatcher.retry_overdue(lambda t: self.presence_of(t) == Presence.ONLINE)
            except Exception:
                log.exception("expiry sweep failed; trying again next round")

    async def _lapse_approvals(self) -> None:
        """Every few seconds: held broadcasts nobody approved in time lapse."""
        if time.monotonic() - self._approvals_checked < APPROVAL_CHECK_INTERVAL_S:
            return
        self._approvals_checked = time.monotonic()
        now = now_utc()
        for broadcast_id in await self.writer.call(lambda session: lapse_overdue(session, now)):
            log.warning("broadcast %s lapsed: nobody approved it in time; nothing was sent", broadcast_id)

    async def _prune_telemetry(self) -> None:
        """Once an hour (and at start): telemetry samples older than the days kept are deleted."""
        checked = self._telemetry_pruned
        if checked is not None and time.monotonic() - checked < TELEMETRY_PRUNE_INTERVAL_S:
            return
        self._telemetry_pruned = time.monotonic()
        before = now_utc() - timedelta(days=self.settings.telemetry_keep_days)
        deleted = await self.writer.call(lambda session: prune_telemetry(session, before))
        if deleted:
            log.info("deleted %d telemetry samples from before %s", deleted, before.isoformat())

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
        if not self.settings.embedded_broker:
            assert self.settings.mqtt_url is not None
            return BrokerAddress.from_url(
                self.settings.mqtt_url,
                ca_file=self.settings.mqtt_ca_file,
                cert_file=self.settings.mqtt_cert_file,
                key_file=self.settings.mqtt_key_file,
            )
        self.broker = EmbeddedBroker(self.settings.embedded_broker_host, self.settings.embedded_broker_port)
        await asyncio.to_thread(self.broker.start)
        log.info("no CUNXIANG_MQTT_URL set: started the embedded MQTT broker (amqtt) on %s", self.broker.url)
        return BrokerAddress(self.broker.host, self.broker.port)

    def _run(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        """A task that must live as long as the controller; its death is logged and fails /healthz."""
        task = asyncio.create_task(coroutine, name=f"cunxiang-{name}")
        self._tasks[name] = task

        def died(done: asyncio.Task[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.critical("controller task %s died", name, exc_info=done.exception())
                self.failed_tasks.append(name)

        task.add_done_callback(died)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Fire-and-forget work (resends); failures are logged, never lost silently."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._background.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("background work failed", exc_info=finished.exception())

        task.add_done_callback(done)


def _staged_by_someone(broadcast: Broadcast) -> bool:
    """Staged for later by a person or an upstream system, not by the scheduler (which releases
    its own runs at their time)."""
    staged = broadcast.not_before is not None and broadcast.state == BroadcastState.ACCEPTED
    return staged and broadcast.created_by is not None


async def _step(what: str, work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("shutdown: could not %s", what)


def _live(
    broadcast: Broadcast, states: dict[str, DeliveryState], owed_cancel: set[str] | None = None
) -> LiveBroadcast:
    return LiveBroadcast(
        id=broadcast.id,
        issued_at=broadcast.issued_at,
        expires_at=broadcast.expires_at,
        priority=broadcast.priority,
        supersedes=json.loads(broadcast.command).get("supersedes") or [],
        regions=broadcast.regions,
        terminals=broadcast.terminal_ids or [],
        payload=(broadcast.cancel_command or broadcast.command).encode(),
        states=states,
        state=BroadcastState(broadcast.state),
        resumable=broadcast.kind == BroadcastKind.PROGRAMME,
        not_before=broadcast.not_before,
        owed_cancel=owed_cancel or set(),
    )


def _audit(
    by: Principal, action: str, command: Command, request: BroadcastRequest, linked: str | None, held: bool
) -> AuditEntry:
    return by.audit(
        action,
        "broadcast",
        command.id,
        command.issuer_region,
        kind=command.kind.value,
        level=command.level,
        status=command.status.value,
        event=request.event,
        regions=request.regions,
        groups=request.groups,
        terminals=request.terminals[:50],
        text=request.text,
        expires_at=command.expires_at.isoformat(),
        linked=linked,
        awaiting_approval=held,
    )
