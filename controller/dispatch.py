"""Getting commands to terminals: the first publish, and sending again to whoever has not finished.

The first delivery is one publish per target region (the broker fans it out to every terminal
below) and one per terminal addressed by itself (a single terminal, or a group's). Later sends go
to single terminals on their own topics, never to a whole region again: a terminal that already
played an alert and has since rebooted (its de-duplication memory is RAM) would play it a second
time. Terminals de-duplicate by command id and answer a repeat with their last acknowledgement,
so sending again is how acknowledgements lost on the way are recovered too.
"""

import asyncio
import logging
from collections.abc import Callable
from functools import lru_cache

from controller.bus import BusUnavailable, MqttBus
from controller.metrics import Metrics
from controller.models import BroadcastState
from controller.signing_keys import SigningKeys
from controller.tracker import DeliveryTracker, LiveBroadcast
from devices.messages import Cancel, Command, decode_command, encode, now_utc
from devices.topics import TopicScheme

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
# Per-terminal sends in flight at once: enough to keep the broker busy, few enough that a
# reconnect with a county's worth of unfinished deliveries does not flood the client's queue.
RESEND_CONCURRENCY = 200


@lru_cache(maxsize=256)
def _message(payload: bytes) -> Command | Cancel:
    """A stored command or cancel payload, decoded once however often it is sent again."""
    return decode_command(payload)


class Dispatcher:
    def __init__(
        self,
        bus: MqttBus,
        tracker: DeliveryTracker,
        topics: TopicScheme,
        metrics: Metrics,
        keys: SigningKeys,
    ) -> None:
        self._bus = bus
        self._keys = keys
        self._tracker = tracker
        self._topics = topics
        self._metrics = metrics
        self._region_locks: dict[str, asyncio.Lock] = {}

    async def publish(self, live: LiveBroadcast, *, its_time: bool = False) -> None:
        """First delivery to every target region; if the broker fails, `retry_unpublished` tries again.
        A broadcast staged by the scheduler is published only when the scheduler says its time has
        come (`its_time`): the scheduler owns it, and may withdraw it instead."""
        if live.open == 0 or (not its_time and live.not_before is not None):
            return
        lock = self._region_lock(live.id)
        if lock.locked():
            return
        async with lock:
            if live.state is BroadcastState.ACCEPTED:
                await self._publish_to_targets(live)

    async def publish_cancel(self, live: LiveBroadcast) -> None:
        """Send the cancel to every target, after any publish of the command still in flight."""
        async with self._region_lock(live.id):
            live.cancel_published = await self._publish_to_targets(live)

    async def retry_unpublished(self) -> None:
        """Region publishes (command or cancel) the broker did not take (called while connected)."""
        for live in self._tracker.unexpired(now_utc()):
            if live.state is BroadcastState.ACCEPTED:
                await self.publish(live)
            elif live.state is BroadcastState.CANCELLING and not live.cancel_published:
                await self.publish_cancel(live)

    async def retry_overdue(self, is_online: Callable[[str], bool]) -> None:
        """Send again to online terminals whose answer is overdue (offline ones get it at their birth)."""
        for live, terminals in self._tracker.due_retries(now_utc()):
            online = [t for t in terminals if is_online(t)]
            for terminal_id in set(terminals) - set(online):
                live.retries.pop(terminal_id, None)
            if online:
                sent = await self.resend(live, online)
                self._metrics.delivery_retries.inc(len(sent))
                self._tracker.schedule_retries(live, [t for t in online if t not in sent], now_utc())

    async def _publish_to_targets(self, live: LiveBroadcast) -> bool:
        """The first publish, on every target region's and single terminal's topic; all or none
        counts as done (terminals drop the copies a second attempt gives them)."""
        regions = [self._topics.region_command(region) for region in live.regions]
        singles = [self._topics.terminal_command(terminal) for terminal in live.terminals]
        taken = await self._send_all(regions + singles, live.payload)
        if not all(taken):
            log.warning("broadcast %s: first publish failed; will try again", live.id)
            return False
        self._metrics.mqtt_published.labels("region_command").inc(len(regions))
        self._metrics.mqtt_published.labels("terminal_command").inc(len(singles))
        self._tracker.mark_sent(live, None, now_utc())
        return True

    async def _send_all(self, topics: list[str], stored: bytes) -> list[bool]:
        """Publish the stored command or cancel on each topic, stamped now and signed (every send
        anew: a terminal refuses a copy sent long ago), a bounded number at a time; whether the
        broker took each."""
        gate = asyncio.Semaphore(RESEND_CONCURRENCY)
        now = now_utc()
        payload = encode(self._keys.signer(now).sign(_message(stored), now))

        async def send(topic: str) -> bool:
            async with gate:
                try:
                    await self._bus.publish(topic, payload, timeout=PUBLISH_TIMEOUT_S)
                except BusUnavailable:
                    return False
                return True

        return list(await asyncio.gather(*(send(topic) for topic in topics)))

    def _region_lock(self, broadcast_id: str) -> asyncio.Lock:
        return self._region_locks.setdefault(broadcast_id, asyncio.Lock())

    def forget_finished(self) -> None:
        """Drop the locks of broadcasts that are over (once a sweep: per publish it would cost
        a scan of every live broadcast, a thousand times over when a thousand runs start at once)."""
        for broadcast_id, lock in list(self._region_locks.items()):
            if not lock.locked() and self._tracker.find(broadcast_id) is None:
                del self._region_locks[broadcast_id]

    async def resume(self) -> None:
        """After (re)connecting: publish what never was; resend to every terminal not yet finished."""
        for live, unfinished in self._tracker.unfinished(now_utc()):
            if live.state is BroadcastState.ACCEPTED:
                await self.publish(live)
            elif unfinished:
                await self.resend(live, unfinished)

    async def terminal_returned(self, terminal_id: str) -> None:
        """A terminal's new birth: send it every live broadcast it has not finished."""
        for live in self._tracker.unfinished_for(terminal_id, now_utc()):
            await self.resend(live, [terminal_id])

    async def resend(self, live: LiveBroadcast, terminal_ids: list[str]) -> list[str]:
        """Send the broadcast's current payload to single terminals; returns those the broker took."""
        topics = [self._topics.terminal_command(terminal_id) for terminal_id in terminal_ids]
        taken = await self._send_all(topics, live.payload)
        sent = [terminal_id for terminal_id, ok in zip(terminal_ids, taken, strict=True) if ok]
        self._metrics.mqtt_published.labels("terminal_command").inc(len(sent))
        if len(sent) < len(terminal_ids):
            log.warning(
                "broadcast %s: %d of %d resends failed",
                live.id,
                len(terminal_ids) - len(sent),
                len(terminal_ids),
            )
        self._tracker.mark_sent(live, sent, now_utc())
        return sent
