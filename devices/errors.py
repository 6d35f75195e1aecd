"""Errors raised by the wire contract.

ProtocolError            anything received that does not follow protocol v1
├── TopicError           a topic outside the scheme, or with a malformed id
└── PayloadError         a payload that is not valid JSON or fails its model
"""


class ProtocolError(ValueError):
    """Something received does not follow the protocol; `reason` is a short metric-safe label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TopicError(ProtocolError):
    """A topic that is not part of the scheme."""


class PayloadError(ProtocolError):
    """A payload that cannot be decoded into the message its topic promises."""
