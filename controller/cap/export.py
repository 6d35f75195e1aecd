"""CAP 1.2 out: a stored broadcast as the CAP `alert` a downstream system would take in.

Pure: the caller passes what the database knows around the broadcast (`AlertContext`: region
names, the positions of terminals addressed one by one, the broadcast it replaces). Every choice
is made so that our own ingest (`decide`, with the same rules) reads the message back as the
broadcast it came from; docs/cap.md ("Export") lists what each element is filled from.
"""

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Final

from lxml import etree

from controller.cap.geometry import TerminalPosition
from controller.cap.model import Certainty, Info, MsgType, Scope, Severity, Status, Urgency, is_cap_token
from controller.cap.parse import CAP12_NAMESPACE
from controller.cap.rules import NOTICE, CapRules, Outcome
from controller.models import NEVER_SENT, Broadcast, BroadcastState
from devices.messages import AudioRef, Cancel, Command, decode
from devices.priority import BroadcastKind

CAP_MEDIA_TYPE: Final = "application/cap+xml"
HEADLINE_MAX = 160
"""CAP's advice, so a headline fits a text message"""
AREA_TERMINALS_NAMED = 20
"""the terminals an area's description names one by one; the rest are counted"""

_STATUS = {"actual": Status.ACTUAL, "exercise": Status.EXERCISE, "test": Status.TEST}
_MIME_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "ogg": "audio/ogg"}
# Characters XML 1.0 cannot carry at all (a broadcast's text is any JSON string).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# CAP's categories for the events we know by a word in them, first match wins; English words
# match at the start of a word ("flooding", not "training"). Flood is Met, as CAP 1.2 has it.
_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Geo",
        (
            "地震",
            "滑坡",
            "泥石流",
            "崩塌",
            "地质灾害",
            "火山",
            "earthquake",
            "landslide",
            "volcan",
            "tsunami",
        ),
    ),
    (
        "Met",
        (
            *("洪水", "洪涝", "山洪", "暴雨", "台风", "大风", "暴雪", "寒潮", "高温", "干旱", "冰雹", "雷电"),
            *("大雾", "霜冻", "道路结冰", "flood", "rain", "storm", "typhoon", "wind", "snow", "heat"),
            *("cold", "drought", "hail", "thunder", "fog", "tornado", "cyclone"),
        ),
    ),
    ("Fire", ("火灾", "火险", "森林火", "fire", "wildfire")),
    ("Health", ("疫情", "传染病", "食物中毒", "epidemic", "pandemic", "outbreak", "disease")),
    ("CBRNE", ("危化品", "化学品", "核泄漏", "辐射", "chemical", "radiation", "nuclear", "hazmat")),
    ("Env", ("污染", "pollution")),
    ("Infra", ("停电", "停水", "停气", "power cut", "power outage", "water outage")),
    ("Transport", ("交通", "traffic")),
)

# Words for what has none of its own: the event of a broadcast without one, the audio's
# description, an area of single terminals. Chinese unless the broadcast is in English.
_WORDS: dict[str, dict[str, str]] = {
    "zh": {
        BroadcastKind.EMERGENCY: "突发事件",
        BroadcastKind.NOTICE: "通知",
        BroadcastKind.PROGRAMME: "广播节目",
        "audio": "广播音频",
        "terminals": "终端：",
        "more": "等{}个终端",
    },
    "en": {
        BroadcastKind.EMERGENCY: "Emergency",
        BroadcastKind.NOTICE: "Notice",
        BroadcastKind.PROGRAMME: "Programme",
        "audio": "broadcast audio",
        "terminals": "terminals ",
        "more": " and {} more",
    },
}

_OUTCOMES: dict[int, Outcome] = {1: 1, 2: 2, 3: 3, 4: 4}
"""an emergency's level as the level table's outcome; notices and programmes are notices"""
Triple = tuple[Severity, Urgency, Certainty]
_NATURAL: dict[Outcome, Triple] = {
    1: (Severity.EXTREME, Urgency.IMMEDIATE, Certainty.OBSERVED),
    2: (Severity.SEVERE, Urgency.IMMEDIATE, Certainty.OBSERVED),
    3: (Severity.MODERATE, Urgency.IMMEDIATE, Certainty.OBSERVED),
    4: (Severity.MINOR, Urgency.IMMEDIATE, Certainty.OBSERVED),
    NOTICE: (Severity.MINOR, Urgency.FUTURE, Certainty.LIKELY),
}
CANDIDATES: tuple[Triple, ...] = tuple(
    dict.fromkeys([*_NATURAL.values(), *itertools.product(Severity, Urgency, Certainty)])
)
"""The (severity, urgency, certainty) tried in order for a level: first the natural one of each
outcome, then every combination, gravest first."""


@dataclass(frozen=True)
class CapPublisher:
    """What every message we export shares: our `sender`, the county's clock, the level table
    that our own ingest would read it with."""

    sender: str
    timezone: tzinfo
    rules: CapRules

    def __post_init__(self) -> None:
        if not is_cap_token(self.sender):
            raise ValueError(f"CAP sender {self.sender!r} is empty or has a space, comma, '<' or '&'")


@dataclass(frozen=True)
class AlertContext:
    """What the database knows around one broadcast."""

    region_names: Mapping[str, str]
    """names of its regions and of its issuing region, by code (a code without one is its own name)"""
    terminals: Sequence[TerminalPosition] = field(default_factory=tuple)
    """positions of its terminals addressed one by one (`terminal_ids`); those without one are left out"""
    replaces: Broadcast | None = None
    """the broadcast it updates or corrects, named in `references`"""


def export_alert(broadcast: Broadcast, publisher: CapPublisher, context: AlertContext) -> etree._Element:
    """The broadcast as CAP: an Alert, or an Update of the broadcast in `context.replaces`.

    One that was never sent (awaiting approval, rejected, lapsed, withdrawn) is a Draft, which no
    receiver acts on. One cancelled later is still what it was: its cancel is `export_cancel`.
    """
    command = decode(Command, broadcast.command)
    status, note = _status(broadcast)
    references = None
    if context.replaces is not None:
        references = _reference(publisher, context.replaces.id, context.replaces.issued_at)
    root = _head(
        identifier=broadcast.id,
        publisher=publisher,
        sent=broadcast.issued_at,
        status=status,
        msg_type=MsgType.UPDATE if references is not None else MsgType.ALERT,
        note=note,
        references=references,
    )
    root.append(_info(broadcast, command, publisher, context))
    return root


def export_cancel(
    broadcast: Broadcast, cancel: Cancel, publisher: CapPublisher, context: AlertContext
) -> etree._Element:
    """The Cancel of a cancelled broadcast: our cancel command's id and time, referring to the
    broadcast, with the broadcast's info block so receivers filtering by area see it too."""
    command = decode(Command, broadcast.command)
    root = _head(
        identifier=cancel.id,
        publisher=publisher,
        sent=cancel.issued_at,
        status=_status(broadcast)[0],
        msg_type=MsgType.CANCEL,
        note=None,
        references=_reference(publisher, broadcast.id, broadcast.issued_at),
    )
    root.append(_info(broadcast, command, publisher, context))
    return root


def to_bytes(alert: etree._Element) -> bytes:
    """A message as sent: UTF-8 with its XML declaration."""
    return etree.tostring(alert, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def cap_time(moment: datetime, zone: tzinfo) -> str:
    """A CAP time: to the second, in the county's zone, with its numeric offset (never `Z`)."""
    return moment.astimezone(zone).replace(microsecond=0).isoformat()


def choose_triple(rules: CapRules, outcome: Outcome) -> Triple:
    """The first candidate the level table reads back as `outcome`; the natural one for an outcome
    the table never gives (it is then read back as something else: docs/cap.md)."""
    for severity, urgency, certainty in CANDIDATES:
        probe = Info(
            language="", categories=[], event="", severity=severity, urgency=urgency, certainty=certainty
        )
        if rules.outcome(probe) == outcome:
            return severity, urgency, certainty
    return _NATURAL[outcome]


def category(event: str) -> str:
    """CAP's category for an event, from the keyword table; Other when no keyword is in it."""
    for name, keywords in _CATEGORIES:
        for keyword in keywords:
            if keyword.isascii():
                if re.search(r"\b" + re.escape(keyword), event, re.IGNORECASE):
                    return name
            elif keyword in event:
                return name
    return "Other"


def _never_sent(broadcast: Broadcast) -> bool:
    """Held for approval and not (yet) sent: awaiting, refused, lapsed, or withdrawn while held."""
    if broadcast.state == BroadcastState.CANCELLED:
        return broadcast.cancel_command is None
    return broadcast.state in (BroadcastState.AWAITING_APPROVAL, *NEVER_SENT)


def _status(broadcast: Broadcast) -> tuple[Status, str | None]:
    status = broadcast.status or "actual"
    if _never_sent(broadcast):
        return Status.DRAFT, f"never sent ({broadcast.state}): this {status} broadcast reached no terminal"
    return _STATUS[status], None


def _reference(publisher: CapPublisher, identifier: str, sent: datetime) -> str:
    return f"{publisher.sender},{_token(identifier)},{cap_time(sent, publisher.timezone)}"


def _token(identifier: str) -> str:
    if not is_cap_token(identifier):
        raise ValueError(f"{identifier!r} cannot be a CAP identifier (a space, comma, '<' or '&')")
    return identifier


def _head(
    *,
    identifier: str,
    publisher: CapPublisher,
    sent: datetime,
    status: Status,
    msg_type: MsgType,
    note: str | None,
    references: str | None,
) -> etree._Element:
    root = etree.Element(_name("alert"), nsmap={None: CAP12_NAMESPACE})
    _add(root, "identifier", _token(identifier))
    _add(root, "sender", publisher.sender)
    _add(root, "sent", cap_time(sent, publisher.timezone))
    _add(root, "status", status.value)
    _add(root, "msgType", msg_type.value)
    _add(root, "scope", Scope.PUBLIC.value)
    if note is not None:
        _add(root, "note", note)
    if references is not None:
        _add(root, "references", references)
    return root


def _info(
    broadcast: Broadcast, command: Command, publisher: CapPublisher, context: AlertContext
) -> etree._Element:
    content = command.content
    words = _words(content.language)
    kind = BroadcastKind(broadcast.kind)
    event = _clean(broadcast.event or words[kind])
    outcome = _OUTCOMES.get(broadcast.level or 0, NOTICE) if kind is BroadcastKind.EMERGENCY else NOTICE
    severity, urgency, certainty = choose_triple(publisher.rules, outcome)
    info = etree.Element(_name("info"))
    _add(info, "language", content.language)
    _add(info, "category", category(event))
    _add(info, "event", event)
    _add(info, "urgency", urgency.value)
    _add(info, "severity", severity.value)
    _add(info, "certainty", certainty.value)
    _add(info, "expires", cap_time(broadcast.expires_at, publisher.timezone))
    _add(info, "senderName", _clean(_name_of(broadcast.issuer_region, context)))
    text = _clean(content.text or "").strip()
    if text:
        # The headline is a prefix of the description, so our ingest says it once, not twice.
        _add(info, "headline", text.splitlines()[0].strip()[:HEADLINE_MAX])
        _add(info, "description", text)
    if content.audio is not None:
        info.append(_resource(content.audio, words["audio"]))
    for code in broadcast.regions:
        info.append(_region_area(code, context, publisher.rules))
    if context.terminals:
        info.append(_terminals_area(context.terminals, words))
    return info


def _resource(audio: AudioRef, description: str) -> etree._Element:
    resource = etree.Element(_name("resource"))
    _add(resource, "resourceDesc", description)
    extension = audio.url.rsplit("/", 1)[-1].rpartition(".")[2].lower()
    # Not ours (named `<sha256>.<format>`) and not named by its format: we cannot say what it is.
    _add(resource, "mimeType", _MIME_TYPES.get(extension, "application/octet-stream"))
    _add(resource, "size", str(audio.size))
    _add(resource, "uri", audio.url)
    return resource


def _region_area(code: str, context: AlertContext, rules: CapRules) -> etree._Element:
    area = etree.Element(_name("area"))
    _add(area, "areaDesc", _clean(_name_of(code, context)))
    geocode = _geocode(code, rules)
    if geocode is not None:
        element = etree.SubElement(area, _name("geocode"))
        _add(element, "valueName", geocode[0])
        _add(element, "value", geocode[1])
    return area


def _geocode(code: str, rules: CapRules) -> tuple[str, str] | None:
    """The geocode our ingest reads as exactly `code`: our code under the first (in sorted order)
    administrative valueName, else an entry of the geocode table mapping to it alone."""
    for name in sorted(rules.admin_geocode_names):
        if rules.regions_for(name, code) == [code]:
            return name, code
    for name, values in sorted(rules.geocodes.items()):
        for value in sorted(values):
            if rules.regions_for(name, value) == [code]:
                return name, value
    return None


def _terminals_area(terminals: Sequence[TerminalPosition], words: Mapping[str, str]) -> etree._Element:
    area = etree.Element(_name("area"))
    named = ", ".join(t.terminal_id for t in terminals[:AREA_TERMINALS_NAMED])
    rest = len(terminals) - AREA_TERMINALS_NAMED
    _add(area, "areaDesc", words["terminals"] + named + (words["more"].format(rest) if rest > 0 else ""))
    for terminal in terminals:
        # A radius of 0 is the point itself: our ingest selects exactly the terminal standing there.
        _add(area, "circle", f"{terminal.latitude!r},{terminal.longitude!r} 0")
    return area


def _name_of(code: str, context: AlertContext) -> str:
    return context.region_names.get(code) or code


def _words(language: str) -> Mapping[str, str]:
    return _WORDS.get(language.split("-")[0].lower(), _WORDS["zh"])


def _clean(text: str) -> str:
    return _NOT_XML.sub("", text)


def _name(local: str) -> str:
    return f"{{{CAP12_NAMESPACE}}}{local}"


def _add(parent: etree._Element, local: str, text: str) -> etree._Element:
    element = etree.SubElement(parent, _name(local))
    element.text = text
    return element
