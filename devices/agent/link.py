"""One terminal's presence on the broker, the same for a simulated terminal and a real one.

A persistent session (client id = terminal id, `clean_session` false) so QoS 1 commands sent while
the terminal was briefly away are delivered when it returns; the will, birth and goodbye share the
retained status topic, each stamped with a session number that grows with every connection, so a
late will of an earlier session cannot mark the terminal lost after it came back (docs/protocol.md).
"""

import contextlib
import ssl
import time
from dataclasses import dataclass

import aiomqtt

from devices.messages import Presence, TerminalStatus, encode, now_utc
from devices.topics import TopicScheme

KEEPALIVE_S = 60
GOODBYE_TIMEOUT_S = 5


@dataclass
class TerminalLink:
    """Builds the terminal's MQTT client and says hello and goodbye on its status topic."""

    terminal_id: str
    region: str
    topics: TopicScheme
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    firmware: str | None = None
    heartbeat_interval_s: int = 30
    session: int = 0

    def client(self) -> aiomqtt.Client:
        """A client for a new session (not yet connected: use it as a context manager)."""
        self.session = int(time.time() * 1000)
        will = aiomqtt.Will(self.status_topic, self.status(Presence.LOST), qos=1, retain=True)
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.terminal_id,
            username=self.username,
            password=self.password,
            clean_session=False,
            keepalive=KEEPALIVE_S,
            will=will,
            timeout=30,
            tls_context=self.tls,
        )

    async def announce(self, client: aiomqtt.Client) -> None:
        """Subscribe to the terminal's command topics, then publish the retained birth."""
        for topic in self.topics.terminal_subscriptions(self.terminal_id, self.region):
            await client.subscribe(topic, qos=1)
        await client.publish(self.status_topic, self.status(Presence.ONLINE), qos=1, retain=True)

    async def goodbye(self, client: aiomqtt.Client) -> None:
        """The retained `offline` of a clean stop; best effort, as the broker may be gone already."""
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self.status_topic,
                self.status(Presence.OFFLINE),
                qos=1,
                retain=True,
                timeout=GOODBYE_TIMEOUT_S,
            )

    @property
    def status_topic(self) -> str:
        return self.topics.terminal_status(self.terminal_id)

    def status(self, state: Presence) -> bytes:
        return encode(
            TerminalStatus(
                terminal_id=self.terminal_id,
                state=state,
                session=self.session,
                region=self.region,
                firmware=self.firmware,
                heartbeat_interval_s=self.heartbeat_interval_s,
                at=now_utc(),
            )
        )
