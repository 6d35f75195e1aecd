"""amqtt 0.12.1's Broker, with the defects that a county's worth of terminals runs into fixed.

1. It iterates its subscription table while awaiting inside the loop, so a client subscribing
   meanwhile kills the connection of another ("dictionary changed size during iteration").
   Iterating over a snapshot fixes it.
2. On every connect it sends the new client the retained messages matching *any* client's
   filter, so each terminal received every terminal's retained status (N² messages for N
   terminals). Only the client's own subscriptions are served here.
3. Routing one message walks every topic filter of every client, formatting a debug string for
   each that does not match, even with debug logging off: each of the 3 acks per terminal cost
   time in proportion to the number of terminals (2,000 terminals took 16 s to acknowledge a
   county-wide alert). Here a message goes straight to the filters equal to its topic, plus the
   few wildcard filters (the controller's).
4. Each connect and disconnect walks every filter of every client too (to find the client's own),
   and each SUBSCRIBE formats the whole table for a debug line: bringing N terminals online cost
   N² (5,000 terminals never all got online). Here, inside a client's own connection task, the
   table iterates over that client's filters only (an index kept per client), and its repr is short.
5. Its shutdown can leave client sockets open, so clients would not notice the broker is gone;
   every connection is remembered so that stopping really drops them.

Everything else is amqtt's own behaviour, including its choice not to queue messages for
anonymous clients that are offline (the controller does not rely on broker queues: it resends).
"""

import asyncio
from collections import deque
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.constants import QOS_1, QOS_2

_SUBSCRIPTION_REFUSED = 0x80


# The client whose connection task is running, so that amqtt's "for topic in subscriptions" loops
# inside that task visit only that client's filters, which is all they act on.
_CLIENT: ContextVar[str | None] = ContextVar("amqtt_client", default=None)


class _SubscriptionTable(dict[str, list[tuple[Any, int]]]):
    """amqtt's filter → subscribers table, iterated over a snapshot (amqtt awaits inside its loops)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_client: dict[str, set[str]] = {}

    def __iter__(self) -> Iterator[str]:
        client = _CLIENT.get()
        if client is not None:
            return iter([f for f in self.by_client.get(client, ()) if f in self])
        return iter(list(dict.keys(self)))

    def items(self) -> Any:
        return list(dict.items(self))

    def __repr__(self) -> str:
        return f"<{len(self)} subscription filters>"


class PatchedBroker(Broker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = _SubscriptionTable()
        self._wildcard_filters: set[str] = set()
        self.client_writers: set[asyncio.StreamWriter] = set()

    async def stream_connected(self, reader: Any, writer: asyncio.StreamWriter, listener_name: str) -> None:
        self.client_writers.add(writer)
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            self.client_writers.discard(writer)

    def abort_connections(self) -> None:
        for writer in list(self.client_writers):
            writer.transport.abort()

    async def _handle_client_session(self, *args: Any) -> None:
        client_session = args[2]
        token = _CLIENT.set(client_session.client_id)
        try:
            await super()._handle_client_session(*args)
        finally:
            _CLIENT.reset(token)

    async def add_subscription(self, subscription: tuple[str, int], session: Any) -> int:
        granted: int = await super().add_subscription(subscription, session)
        topic_filter = subscription[0]
        if granted != _SUBSCRIPTION_REFUSED:
            self._subscriptions.by_client.setdefault(session.client_id, set()).add(topic_filter)
            if "+" in topic_filter or "#" in topic_filter:
                self._wildcard_filters.add(topic_filter)
        return granted

    def _del_subscription(self, a_filter: str, session: Any) -> int:
        deleted: int = super()._del_subscription(a_filter, session)
        if deleted:
            self._subscriptions.by_client.get(session.client_id, set()).discard(a_filter)
        return deleted

    async def _publish_retained_messages_for_subscription(self, subscription: Any, session: Any) -> None:
        if subscription[0] in self._subscriptions.by_client.get(session.client_id, ()):
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        """amqtt's routing of one message, reaching only the filters that can match it."""
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        filters = [topic] + [f for f in list(self._wildcard_filters) if self._matches(topic, f)]
        for topic_filter in filters:
            for target_session, sub_qos in list(self._subscriptions.get(topic_filter, ())):
                qos = broadcast.get("qos", sub_qos)
                if not await self._topic_filtering(target_session, topic=topic, action=Action.RECEIVE):
                    continue
                connected = target_session.transitions.state == "connected"
                if (
                    not connected
                    and not target_session.clean_session
                    and qos in (QOS_1, QOS_2)
                    and not target_session.is_anonymous
                ):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if not connected:
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    publish = handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                    running_tasks.append(asyncio.ensure_future(publish))
