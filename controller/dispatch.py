"""Getting commands to terminals: first publish, republish after a reconnect, and a terminal's return.

One publish per target region reaches every terminal under it (the broker fans out). A terminal that
comes back online while a live broadcast still waits for it gets the command on its own topic, and
after the controller reconnects, whatever is still unacknowledged is published again (terminals
de-duplicate by command id, so a second copy is harmless).
"""

import logging

from controller.bus import BusUnavailable, MqttBus
from controller.delivery import UNACKNOWLEDGED_STATES
from controller.metrics import Metrics
from controller.models import Broadcast, BroadcastState
from controller.tracker import DeliveryTracker, LiveBroadcast
from controller.writer import DbWriter
from devices.messages import now_utc
from devices.topics import TopicScheme

log = logging.getLogger(__name__)

# Below this many waiting terminals, republishing per terminal costs less broker work than a
# region-wide publish that every terminal under the region would answer again.
PER_TERMINAL_RESEND_LIMIT = 50


class Dispatcher:
    def __init__(
        self, bus: MqttBus, tracker: DeliveryTracker, writer: DbWriter, topics: TopicScheme, metrics: Metrics
    ) -> None:
        self._bus = bus
        self._tracker = tracker
        self._writer = writer
        self._topics = topics
        self._metrics = metrics
        self._broadcasts = Broadcast.__table__  # type: ignore[attr-defined]

    async def publish(self, live: LiveBroadcast) -> bool:
        """Publish to every target region; on failure the deliveries stay pending for `resume`."""
        try:
            for region in live.regions:
                await self._bus.publish(self._topics.region_command(region), live.payload, qos=1)
                self._metrics.mqtt_published.labels("region_command").inc()
        except BusUnavailable as exc:
            log.warning("broadcast %s not published yet (%s); will publish on reconnect", live.id, exc.reason)
            return False
        self._sent(live, None)
        return True

    async def resume(self) -> None:
        """After (re)connecting: publish again whatever live broadcast still waits for someone."""
        now = now_utc()
        for live in self._tracker.live():
            waiting = [t for t, state in live.states.items() if state in UNACKNOWLEDGED_STATES]
            if not waiting or now >= live.expires_at:
                continue
            if len(waiting) <= PER_TERMINAL_RESEND_LIMIT:
                await self.send_to_terminals(live, waiting)
            else:
                await self.publish(live)

    async def terminal_returned(self, terminal_id: str) -> None:
        """A terminal's birth: send it every live broadcast it has not acknowledged."""
        for broadcast_id in self._tracker.waiting_for(terminal_id):
            live = self._tracker.get(broadcast_id)
            if live is not None and now_utc() < live.expires_at:
                await self.send_to_terminals(live, [terminal_id])

    async def send_to_terminals(self, live: LiveBroadcast, terminal_ids: list[str]) -> None:
        sent = []
        try:
            for terminal_id in terminal_ids:
                await self._bus.publish(self._topics.terminal_command(terminal_id), live.payload, qos=1)
                self._metrics.mqtt_published.labels("terminal_command").inc()
                sent.append(terminal_id)
        except BusUnavailable as exc:
            log.warning("broadcast %s: resend interrupted (%s)", live.id, exc.reason)
        self._sent(live, sent)

    def _sent(self, live: LiveBroadcast, terminal_ids: list[str] | None) -> None:
        if self._tracker.get(live.id) is None:
            return
        self._writer.update(self._broadcasts, (live.id,), {"state": BroadcastState.ACTIVE.value})
        self._tracker.mark_sent(live.id, terminal_ids, now_utc())
