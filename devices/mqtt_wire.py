"""MQTT 3.1.1 packets as bytes, without IO: what the controller's bus and the bench's terminals
put on a connection and read from it.

Only what those clients use: CONNECT (with a will, a user name and password), PUBLISH at QoS 0 and
1 both ways, PUBACK, SUBSCRIBE, PINGREQ and DISCONNECT out; CONNACK, PUBLISH, PUBACK, SUBACK and
PINGRESP in. QoS 2 is never asked for (every subscription is QoS 1, so a broker never sends it).
`split` cuts a buffer into whole packets and leaves an incomplete one for the next read, so one
read of the socket can carry hundreds of packets (the point: paho-mqtt reads a packet's header a
byte per system call and does several Python calls per packet).
"""

from dataclasses import dataclass

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
MAX_REMAINING = 268_435_455

CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MalformedPacket(ValueError):
    """The peer sent something that is not an MQTT 3.1.1 packet we can read."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _length(n: int) -> bytes:
    if n > MAX_REMAINING:
        raise ValueError(f"an MQTT packet holds at most {MAX_REMAINING} bytes")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    if len(data) > 0xFFFF:
        raise ValueError("an MQTT string holds at most 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def connect_packet(
    client_id: str,
    *,
    keepalive: int,
    clean_session: bool,
    will: Will | None = None,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _string(will.topic) + _string(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    body = _string("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big") + payload
    return b"\x10" + _length(len(body)) + body


def publish_packet(
    topic: str, payload: bytes, *, qos: int, retain: bool = False, packet_id: int = 0
) -> bytes:
    """A PUBLISH; `packet_id` for QoS 1."""
    head = 0x30 | (qos << 1) | (1 if retain else 0)
    name = topic.encode()
    variable = len(name).to_bytes(2, "big") + name
    if qos:
        variable += packet_id.to_bytes(2, "big")
    return bytes((head,)) + _length(len(variable) + len(payload)) + variable + payload


def puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def subscribe_packet(packet_id: int, topics: list[tuple[str, int]]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_string(topic) + bytes((qos,)) for topic, qos in topics)
    return b"\x82" + _length(len(body)) + body


@dataclass(frozen=True, slots=True)
class Publish:
    """A PUBLISH received."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int
    retain: bool


Packet = tuple[int, int, bytes]
"""(packet type, flags of the first byte, the rest of the packet after its fixed header)"""


def split(buffer: bytes | bytearray, end: int | None = None) -> tuple[list[Packet], int]:
    """The whole packets at the start of `buffer` (up to `end`), and how many bytes they took."""
    packets: list[Packet] = []
    position = 0
    if end is None:
        end = len(buffer)
    while end - position >= 2:
        first = buffer[position]
        length, shift, index = 0, 0, position + 1
        while True:
            if index >= end:
                return packets, position
            byte = buffer[index]
            index += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 21:
                raise MalformedPacket("remaining length longer than four bytes")
        if index + length > end:
            break
        packets.append((first >> 4, first & 0x0F, bytes(buffer[index : index + length])))
        position = index + length
    return packets, position


def read_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 3
    if qos > 1:
        raise MalformedPacket(f"PUBLISH at QoS {qos}: only 0 and 1 are subscribed to")
    if len(body) < 2:
        raise MalformedPacket("PUBLISH without a topic")
    size = (body[0] << 8) | body[1]
    start = 2 + size
    try:
        topic = body[2:start].decode()
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"topic is not UTF-8: {exc}") from None
    packet_id = 0
    if qos:
        if len(body) < start + 2:
            raise MalformedPacket("PUBLISH at QoS 1 without a packet id")
        packet_id = (body[start] << 8) | body[start + 1]
        start += 2
    return Publish(topic, body[start:], qos, packet_id, bool(flags & 1))


def read_packet_id(body: bytes) -> int:
    if len(body) < 2:
        raise MalformedPacket("packet without a packet id")
    return (body[0] << 8) | body[1]
