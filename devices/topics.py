"""MQTT topics of protocol v1: builders and a parser.

All topics live under `<prefix>/v1/`, so several deployments (or protocol versions) can share a
broker. Commands go to `region/<code>/cmd` (the broker fans one publish out to every terminal that
subscribed to that region) or to `terminal/<id>/cmd` (retries). Terminals publish on their own
`terminal/<id>/...` topics, which the controller reads with three wildcard subscriptions.
"""

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import NamedTuple

from devices import PROTOCOL_VERSION
from devices.errors import TopicError
from devices.identifiers import is_region_code, is_terminal_id, region_ancestry

_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class TerminalChannel(StrEnum):
    """What a terminal publishes, one topic each."""

    STATUS = "status"
    HEARTBEAT = "heartbeat"
    ACK = "ack"


_CHANNELS = {channel.value: channel for channel in TerminalChannel}


class TerminalTopic(NamedTuple):
    """A parsed `terminal/<id>/<channel>` topic."""

    terminal_id: str
    channel: TerminalChannel


@dataclass(frozen=True)
class TopicScheme:
    """Builds and parses the topics of one deployment (`prefix`, default `cx`)."""

    prefix: str = "cx"

    def __post_init__(self) -> None:
        if _PREFIX.fullmatch(self.prefix) is None:
            raise ValueError(f"topic prefix must match {_PREFIX.pattern}, got {self.prefix!r}")

    @property
    def root(self) -> str:
        return f"{self.prefix}/v{PROTOCOL_VERSION}"

    def region_command(self, region_code: str) -> str:
        if not is_region_code(region_code):
            raise TopicError("bad_region", f"not a region code: {region_code!r}")
        return f"{self.root}/region/{region_code}/cmd"

    def terminal_command(self, terminal_id: str) -> str:
        return self._terminal(terminal_id, "cmd")

    def terminal_status(self, terminal_id: str) -> str:
        return self._terminal(terminal_id, TerminalChannel.STATUS)

    def terminal_heartbeat(self, terminal_id: str) -> str:
        return self._terminal(terminal_id, TerminalChannel.HEARTBEAT)

    def terminal_ack(self, terminal_id: str) -> str:
        return self._terminal(terminal_id, TerminalChannel.ACK)

    def controller_status(self, controller_id: str) -> str:
        if not is_terminal_id(controller_id):
            raise TopicError("bad_controller_id", f"not a valid controller id: {controller_id!r}")
        return f"{self.root}/controller/{controller_id}/status"

    def terminal_subscriptions(self, terminal_id: str, region_code: str) -> list[str]:
        """What a terminal subscribes to: its own command topic and its region's and every wider one."""
        try:
            ancestry = region_ancestry(region_code)
        except ValueError:
            raise TopicError("bad_region", f"not a region code: {region_code!r}") from None
        return [self.terminal_command(terminal_id)] + [self.region_command(code) for code in ancestry]

    def controller_subscriptions(self) -> list[str]:
        """The controller's wildcard subscriptions: every terminal's status, heartbeats and acks."""
        return [f"{self.root}/terminal/+/{channel}" for channel in TerminalChannel]

    @cached_property
    def _terminals_root(self) -> str:
        return f"{self.root}/terminal/"

    def parse_terminal_topic(self, topic: str) -> TerminalTopic:
        """Parse a topic the controller received; raises TopicError for anything else.

        (Once per message a county sends: the prefix is compared and the channel looked up
        without building strings or calling the enum.)"""
        root = self._terminals_root
        terminal_id, slash, channel = topic[len(root) :].partition("/")
        if not topic.startswith(root) or not slash or "/" in channel:
            raise TopicError("unexpected_topic", f"not a terminal topic of {self.root}: {topic!r}")
        if not is_terminal_id(terminal_id):
            raise TopicError("bad_terminal_id", f"malformed terminal id in {topic!r}")
        known = _CHANNELS.get(channel)
        if known is None:
            raise TopicError("unexpected_topic", f"unknown channel {channel!r} in {topic!r}")
        return TerminalTopic(terminal_id, known)

    def _terminal(self, terminal_id: str, channel: str) -> str:
        if not is_terminal_id(terminal_id):
            raise TopicError("bad_terminal_id", f"not a valid terminal id: {terminal_id!r}")
        return f"{self.root}/terminal/{terminal_id}/{channel}"
