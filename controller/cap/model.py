"""The parts of a CAP 1.2 alert that Cunxiang uses, read from a schema-valid element.

The schema checks structure and vocabularies; `read_alert` adds the spec's rules that the schema
cannot express (references for Update and Cancel, well-formed triples, time zones, polygon rings)
and raises CapRejected naming the element that breaks one.
"""

import base64
import binascii
import re
from datetime import datetime
from enum import StrEnum

from lxml import etree
from pydantic import AwareDatetime, BaseModel, ConfigDict

from controller.cap.geometry import Point
from controller.cap.parse import CAP12_NAMESPACE, CapRejected

_NS = {"cap": CAP12_NAMESPACE}
# The schema's pattern for CAP times, with the offset required (a "Z" is not CAP); its [-,+] is
# the standard's own typo for [-+], and a comma is refused here when the time is read.
_CAP_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d$")
_RESTRICTED = re.compile(r"[\s,<&]")


def is_cap_token(value: str) -> bool:
    """Whether `value` may be an `identifier` or `sender`: not empty, no space, comma, '<' or '&'."""
    return bool(value) and _RESTRICTED.search(value) is None


class Status(StrEnum):
    ACTUAL = "Actual"
    EXERCISE = "Exercise"
    SYSTEM = "System"
    TEST = "Test"
    DRAFT = "Draft"


class MsgType(StrEnum):
    ALERT = "Alert"
    UPDATE = "Update"
    CANCEL = "Cancel"
    ACK = "Ack"
    ERROR = "Error"


class Scope(StrEnum):
    PUBLIC = "Public"
    RESTRICTED = "Restricted"
    PRIVATE = "Private"


class Urgency(StrEnum):
    IMMEDIATE = "Immediate"
    EXPECTED = "Expected"
    FUTURE = "Future"
    PAST = "Past"
    UNKNOWN = "Unknown"


class Severity(StrEnum):
    EXTREME = "Extreme"
    SEVERE = "Severe"
    MODERATE = "Moderate"
    MINOR = "Minor"
    UNKNOWN = "Unknown"


class Certainty(StrEnum):
    OBSERVED = "Observed"
    LIKELY = "Likely"
    POSSIBLE = "Possible"
    UNLIKELY = "Unlikely"
    UNKNOWN = "Unknown"


class CapReference(BaseModel):
    """One message, as CAP's `references` names it: sender, identifier and sent time.

    Equal when the sent instants are equal, whatever offset each was written with.
    """

    model_config = ConfigDict(frozen=True)

    sender: str
    identifier: str
    sent: AwareDatetime

    def __str__(self) -> str:
        return f"{self.sender},{self.identifier},{self.sent.isoformat()}"


class Geocode(BaseModel):
    model_config = ConfigDict(frozen=True)

    value_name: str
    value: str


class Circle(BaseModel):
    model_config = ConfigDict(frozen=True)

    centre: Point
    """(latitude, longitude)"""
    radius_km: float


class Area(BaseModel):
    model_config = ConfigDict(frozen=True)

    description: str
    polygons: list[list[Point]] = []
    """closed rings of (latitude, longitude), first point repeated last"""
    circles: list[Circle] = []
    geocodes: list[Geocode] = []


class Resource(BaseModel):
    model_config = ConfigDict(frozen=True)

    description: str
    mime_type: str
    size: int | None = None
    uri: str | None = None
    content: bytes | None = None
    """the embedded `derefUri`, decoded"""
    digest: str | None = None
    """SHA-1 of the resource, hexadecimal, as CAP 1.2 defines it"""


class Info(BaseModel):
    model_config = ConfigDict(frozen=True)

    language: str
    """as given, or CAP's default en-US"""
    categories: list[str]
    event: str
    response_types: list[str] = []
    urgency: Urgency
    severity: Severity
    certainty: Certainty
    effective: AwareDatetime | None = None
    onset: AwareDatetime | None = None
    expires: AwareDatetime | None = None
    sender_name: str | None = None
    headline: str | None = None
    description: str | None = None
    instruction: str | None = None
    resources: list[Resource] = []
    areas: list[Area] = []


class CapAlert(BaseModel):
    """A CAP 1.2 alert message, as far as Cunxiang reads it."""

    model_config = ConfigDict(frozen=True)

    identifier: str
    sender: str
    sent: AwareDatetime
    status: Status
    msg_type: MsgType
    scope: Scope
    note: str | None = None
    references: list[CapReference] = []
    infos: list[Info] = []

    @property
    def reference(self) -> CapReference:
        """How a later message would refer to this one."""
        return CapReference(sender=self.sender, identifier=self.identifier, sent=self.sent)


def read_alert(root: etree._Element) -> CapAlert:
    """The alert of a schema-valid `alert` element (see parse_cap); raises CapRejected."""
    identifier = _required(root, "identifier")
    sender = _required(root, "sender")
    for name, value in (("identifier", identifier), ("sender", sender)):
        if not is_cap_token(value):
            raise CapRejected(f"<{name}> {value!r} contains a space, comma, '<' or '&', which CAP forbids")
    msg_type = MsgType(_required(root, "msgType"))
    references = _references(_text(root, "references"))
    if msg_type in (MsgType.UPDATE, MsgType.CANCEL) and not references:
        raise CapRejected(
            f"an {msg_type.value} must name the message(s) it replaces in <references>; it has none"
        )
    return CapAlert(
        identifier=identifier,
        sender=sender,
        sent=_time("sent", _required(root, "sent")),
        status=Status(_required(root, "status")),
        msg_type=msg_type,
        scope=Scope(_required(root, "scope")),
        note=_text(root, "note"),
        references=references,
        infos=[_info(element) for element in root.iterfind("cap:info", _NS)],
    )


def _text(parent: etree._Element, name: str) -> str | None:
    """The trimmed text of a child element; an empty element counts as absent."""
    element = parent.find(f"cap:{name}", _NS)
    if element is None or element.text is None or not element.text.strip():
        return None
    return element.text.strip()


def _required(parent: etree._Element, name: str) -> str:
    value = _text(parent, name)
    if value is None:
        raise CapRejected(f"<{name}> is empty")
    return value


def _texts(parent: etree._Element, name: str) -> list[str]:
    return [e.text.strip() for e in parent.iterfind(f"cap:{name}", _NS) if e.text and e.text.strip()]


def _time(name: str, value: str) -> datetime:
    if not _CAP_TIME.match(value):
        raise CapRejected(f"<{name}> {value!r} is not a CAP time such as 2024-04-22T14:12:13+08:00")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise CapRejected(f"<{name}> {value!r} is not a valid date and time") from None


def _optional_time(parent: etree._Element, name: str) -> datetime | None:
    value = _text(parent, name)
    return None if value is None else _time(name, value)


def _references(value: str | None) -> list[CapReference]:
    references = []
    for triple in (value or "").split():
        parts = triple.split(",")
        if len(parts) != 3 or not all(parts):
            raise CapRejected(f"<references> entry {triple!r} is not sender,identifier,sent")
        references.append(
            CapReference(sender=parts[0], identifier=parts[1], sent=_time("references", parts[2]))
        )
    return references


def _info(element: etree._Element) -> Info:
    return Info(
        language=_text(element, "language") or "en-US",
        categories=_texts(element, "category"),
        event=_required(element, "event"),
        response_types=_texts(element, "responseType"),
        urgency=Urgency(_required(element, "urgency")),
        severity=Severity(_required(element, "severity")),
        certainty=Certainty(_required(element, "certainty")),
        effective=_optional_time(element, "effective"),
        onset=_optional_time(element, "onset"),
        expires=_optional_time(element, "expires"),
        sender_name=_text(element, "senderName"),
        headline=_text(element, "headline"),
        description=_text(element, "description"),
        instruction=_text(element, "instruction"),
        resources=[_resource(e) for e in element.iterfind("cap:resource", _NS)],
        areas=[_area(e) for e in element.iterfind("cap:area", _NS)],
    )


def _resource(element: etree._Element) -> Resource:
    description = _text(element, "resourceDesc") or ""
    size = _text(element, "size")
    embedded = _text(element, "derefUri")
    content = None
    if embedded is not None:
        try:
            content = base64.b64decode("".join(embedded.split()), validate=True)
        except (binascii.Error, ValueError):
            raise CapRejected(f"resource {description!r}: <derefUri> is not base64") from None
    return Resource(
        description=description,
        mime_type=_required(element, "mimeType"),
        size=int(size) if size is not None else None,
        uri=_text(element, "uri"),
        content=content,
        digest=_text(element, "digest"),
    )


def _area(element: etree._Element) -> Area:
    description = _required(element, "areaDesc")
    return Area(
        description=description,
        polygons=[_polygon(description, text) for text in _texts(element, "polygon")],
        circles=[_circle(description, text) for text in _texts(element, "circle")],
        geocodes=[
            Geocode(value_name=name, value=value)
            for e in element.iterfind("cap:geocode", _NS)
            if (name := _text(e, "valueName")) is not None and (value := _text(e, "value")) is not None
        ],
    )


def _point(area: str, text: str) -> Point:
    try:
        lat_text, lon_text = text.split(",")
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        raise CapRejected(f"area {area!r}: {text!r} is not a latitude,longitude pair") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise CapRejected(f"area {area!r}: {text!r} is off the globe (latitude first, then longitude)")
    return (lat, lon)


def _polygon(area: str, text: str) -> list[Point]:
    ring = [_point(area, pair) for pair in text.split()]
    if len(ring) < 4 or ring[0] != ring[-1]:
        raise CapRejected(
            f"area {area!r}: a <polygon> needs at least 4 points with the first repeated last; "
            f"it has {len(ring)}{'' if ring and ring[0] == ring[-1] else ', not closed'}"
        )
    return ring


def _circle(area: str, text: str) -> Circle:
    try:
        centre_text, radius_text = text.split()
        radius = float(radius_text)
    except ValueError:
        raise CapRejected(f"area {area!r}: <circle> {text!r} is not 'latitude,longitude radius'") from None
    if not radius >= 0:
        raise CapRejected(f"area {area!r}: <circle> radius {radius_text!r} is not a distance in km")
    return Circle(centre=_point(area, centre_text), radius_km=radius)
