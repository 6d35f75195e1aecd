"""From a CAP alert to what Cunxiang should do with it: a pure decision, no database, no network.

    broadcast   a new broadcast (an Alert)
    update      a broadcast replacing the earlier one(s) its references name (an Update)
    cancel      end the earlier broadcast(s) (a Cancel, or an Update that no longer covers us)
    store_only  kept for the record, never broadcast (Draft, System, Ack, Error, not for us, ...)
    rejected    bad input, with the precise reason

The caller supplies what the pure function cannot know: the positions of the county's terminals
and the earlier messages it has (`known`: at least those whose sender and identifier the alert's
references name), and stores the message with its decision.
"""

import hashlib
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.broadcasts import BroadcastRequest
from controller.cap.geometry import TerminalPosition, terminals_in
from controller.cap.model import CapAlert, CapReference, Info, MsgType, Resource, Scope, Status, read_alert
from controller.cap.parse import CapRejected, parse_cap
from controller.cap.rules import CapRules, choose_language
from devices.messages import BroadcastStatus
from devices.priority import BroadcastKind, EmergencyLevel

_STATUS = {
    Status.ACTUAL: BroadcastStatus.ACTUAL,
    Status.EXERCISE: BroadcastStatus.EXERCISE,
    Status.TEST: BroadcastStatus.TEST,
}
_EVENT_MAX = 100
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class CapAudio(BaseModel):
    """Audio the alert carries: embedded bytes (checked) or a URI for the caller to fetch."""

    model_config = ConfigDict(frozen=True)

    mime_type: str
    content: bytes | None = None
    uri: str | None = None


class CapBroadcast(BaseModel):
    """Broadcast `request` (its audio, if any, once the caller has stored `audio`)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["broadcast"] = "broadcast"
    request: BroadcastRequest
    language: str
    """the language of the info block chosen"""
    areas: list[str]
    """the `areaDesc` of every area that reached the county"""
    audio: CapAudio | None = None
    not_before: datetime | None = None
    """the alert's `effective` time when it is still to come"""
    notes: list[str] = []
    """what was left out and why (audio that failed its check, other info blocks)"""


class CapUpdate(CapBroadcast):
    """Replace the broadcast(s) of the earlier messages `replaces` with `request`."""

    kind: Literal["update"] = "update"  # type: ignore[assignment]
    replaces: list[CapReference]


class CapCancel(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["cancel"] = "cancel"
    cancels: list[CapReference]
    reason: str


class CapStoreOnly(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["store_only"] = "store_only"
    reason: str


class CapRejection(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["rejected"] = "rejected"
    reason: str


CapDecision = Annotated[
    CapBroadcast | CapUpdate | CapCancel | CapStoreOnly | CapRejection, Field(discriminator="kind")
]


class CapOutcome(BaseModel):
    """A message's alert (None when it could not be read) and what to do with it."""

    model_config = ConfigDict(frozen=True)

    alert: CapAlert | None
    decision: CapDecision


def ingest_cap(
    data: bytes,
    *,
    rules: CapRules,
    max_bytes: int,
    terminals: Iterable[TerminalPosition],
    known: Iterable[CapReference],
    now: datetime,
) -> CapOutcome:
    """Parse, validate and map one CAP message; never raises for bad input."""
    alert = read_cap(data, max_bytes)
    if isinstance(alert, CapRejection):
        return CapOutcome(alert=None, decision=alert)
    return CapOutcome(
        alert=alert, decision=decide(alert, rules=rules, terminals=terminals, known=known, now=now)
    )


def read_cap(data: bytes, max_bytes: int) -> CapAlert | CapRejection:
    """The alert in a CAP message, or why there is none; never raises for bad input."""
    try:
        return read_alert(parse_cap(data, max_bytes))
    except CapRejected as exc:
        return CapRejection(reason=exc.reason)


def decide(
    alert: CapAlert,
    *,
    rules: CapRules,
    terminals: Iterable[TerminalPosition],
    known: Iterable[CapReference],
    now: datetime,
) -> CapDecision:
    """What to do with a read alert (see the module's docstring)."""
    try:
        return _decide(alert, rules, list(terminals), known, now)
    except CapRejected as exc:
        return CapRejection(reason=exc.reason)
    except ValidationError as exc:
        # A request our own API would refuse (more terminals than one broadcast may address).
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        return CapRejection(reason=f"it cannot become a broadcast: {where}: {error['msg']}")


def _decide(
    alert: CapAlert,
    rules: CapRules,
    terminals: list[TerminalPosition],
    known: Iterable[CapReference],
    now: datetime,
) -> CapDecision:
    if alert.status not in _STATUS:
        return CapStoreOnly(reason=f"status {alert.status.value}: kept for the record, never broadcast")
    if alert.msg_type in (MsgType.ACK, MsgType.ERROR):
        return CapStoreOnly(reason=f"msgType {alert.msg_type.value}: an answer to a message, nothing to play")
    if alert.scope is not Scope.PUBLIC:
        return CapStoreOnly(reason=f"scope {alert.scope.value}: not for public loudspeakers")
    replaces, mismatches = _match(alert.references, known)
    if alert.msg_type is MsgType.CANCEL:
        if not replaces:
            raise CapRejected(f"the Cancel refers to no message we have: {_listed(alert.references)}")
        return CapCancel(cancels=replaces, reason=alert.note or "cancelled by the sender")
    if alert.msg_type is MsgType.UPDATE and not replaces:
        raise CapRejected(f"the Update refers to no message we have: {_listed(alert.references)}")
    plan = _plan(alert, rules, terminals, now)
    if alert.msg_type is MsgType.UPDATE:
        if isinstance(plan, CapStoreOnly):
            return CapCancel(cancels=replaces, reason=f"the update ends it: {plan.reason}")
        shared = {
            name: getattr(plan, name) for name in CapBroadcast.model_fields if name not in ("kind", "notes")
        }
        return CapUpdate(**shared, notes=mismatches + plan.notes, replaces=replaces)
    return plan


def _match(
    references: list[CapReference], known: Iterable[CapReference]
) -> tuple[list[CapReference], list[str]]:
    """The known messages the references name, and notes on references whose `sent` differs.

    CAP makes an identifier unique for its sender, so sender and identifier find the message;
    `sent` is compared only to be noted: real senders get it wrong (Taiwan's CWA, by a second).
    """
    by_key = {(k.sender, k.identifier): k for k in known}
    found: list[CapReference] = []
    notes: list[str] = []
    for reference in references:
        message = by_key.get((reference.sender, reference.identifier))
        if message is None or message in found:
            continue
        found.append(message)
        if message.sent != reference.sent:
            notes.append(
                f"references gives {reference.identifier} as sent {reference.sent.isoformat()}; "
                f"it was sent {message.sent.isoformat()}"
            )
    return found, notes


def _listed(references: list[CapReference]) -> str:
    return " ".join(str(r) for r in references)


def _plan(
    alert: CapAlert, rules: CapRules, terminals: list[TerminalPosition], now: datetime
) -> CapBroadcast | CapStoreOnly:
    language = choose_language(alert.infos, rules.languages)
    if language is None:
        return CapStoreOnly(reason="no <info> block: nothing to broadcast")
    # Blocks in one language may split the area by severity (Taiwan's CWA sends one per level):
    # every block reaching us adds its areas, and the gravest block gives level and text, so a
    # milder area hears the graver message rather than nothing.
    reaching: list[tuple[Info, list[str], list[str], list[str]]] = []
    for info in (i for i in alert.infos if i.language == language):
        regions, targeted, areas = _target(info, rules, terminals)
        if regions or targeted:
            reaching.append((info, regions, targeted, areas))
    if not reaching:
        return CapStoreOnly(reason="none of its areas is in this county or reaches one of our terminals")
    ranked = sorted(reaching, key=lambda r: _gravity(rules.outcome(r[0])))
    info = ranked[0][0]
    outcome = rules.outcome(info)
    expires_at = _expiry(info, rules, now)
    if expires_at <= now:
        return CapStoreOnly(reason=f"it expired at {expires_at.isoformat()}")
    notes = [
        f"another {language} block ({other.severity.value}, {other.urgency.value}) reaches us too: "
        "its areas hear this graver one"
        for other, *_ in ranked[1:]
    ]
    audio, audio_notes = _audio(info.resources)
    request = BroadcastRequest(
        kind=BroadcastKind.EMERGENCY if isinstance(outcome, int) else BroadcastKind.NOTICE,
        level=EmergencyLevel(outcome) if isinstance(outcome, int) else None,
        regions=_unique(code for r in ranked for code in r[1]),
        terminals=_unique(t for r in ranked for t in r[2]),
        text=compose_text(info, rules.text_max_chars),
        language=_broadcast_language(language),
        expires_at=expires_at,
        status=_STATUS[alert.status],
        event=info.event[:_EVENT_MAX],
    )
    return CapBroadcast(
        request=request,
        language=language,
        areas=_unique(a for r in ranked for a in r[3]),
        audio=audio,
        not_before=info.effective if info.effective is not None and info.effective > now else None,
        notes=notes + audio_notes,
    )


def _target(
    info: Info, rules: CapRules, terminals: list[TerminalPosition]
) -> tuple[list[str], list[str], list[str]]:
    """Our regions (from geocodes), terminals (inside shapes) and the descriptions of areas reached."""
    regions: list[str] = []
    targeted: list[str] = []
    areas: list[str] = []
    for area in info.areas:
        found = [code for g in area.geocodes for code in rules.regions_for(g.value_name, g.value)]
        inside = terminals_in(
            terminals, area.polygons, [(circle.centre, circle.radius_km) for circle in area.circles]
        )
        if found or inside:
            regions.extend(found)
            targeted.extend(inside)
            areas.append(area.description)
    return _unique(regions), _unique(targeted), areas


def _gravity(outcome: int | str) -> int:
    """Sort key: level 1 first, a notice last."""
    return outcome if isinstance(outcome, int) else 5


def _expiry(info: Info, rules: CapRules, now: datetime) -> datetime:
    start = max(now, info.effective) if info.effective is not None else now
    expires = info.expires or start + timedelta(seconds=rules.default_expires_s)
    # Loudspeakers are not left on a week-long message: past the limit the sender must renew it.
    return min(expires, now + timedelta(seconds=rules.max_expires_s))


def compose_text(info: Info, max_chars: int) -> str:
    """What is spoken: headline, description and instruction, each once, in that order.

    A part contained in another is left out; the event stands in for a message without any.
    Whitespace runs (CAP texts are often hard-wrapped) become single spaces; a text over
    `max_chars` is cut with an ellipsis.
    """
    parts = _unique(" ".join(p.split()) for p in (info.headline, info.description, info.instruction) if p)
    # A headline repeated as the description's first line is said once.
    parts = [p for p in parts if not any(p != q and p in q for q in parts)]
    text = "\n".join(parts) or " ".join(info.event.split())
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _audio(resources: list[Resource]) -> tuple[CapAudio | None, list[str]]:
    """The first audio resource usable; notes on those that were not."""
    notes: list[str] = []
    for resource in resources:
        if not resource.mime_type.lower().startswith("audio/"):
            continue
        label = f"audio {resource.description!r}"
        if resource.content is not None:
            problem = _embedded_problem(resource, resource.content)
            if problem is None:
                return CapAudio(mime_type=resource.mime_type, content=resource.content), notes
            notes.append(f"{label} left out, the text is spoken instead: {problem}")
        elif resource.uri is not None and resource.uri.lower().startswith(("http://", "https://")):
            return CapAudio(mime_type=resource.mime_type, uri=resource.uri), notes
        else:
            notes.append(f"{label} left out: neither embedded nor an http(s) URI")
    return None, notes


def _embedded_problem(resource: Resource, content: bytes) -> str | None:
    # Audio that does not match what the message says of it may be damaged or tampered with:
    # it is not played, but the alert itself still goes out as speech.
    if resource.size is not None and resource.size != len(content):
        return f"it is {len(content)} bytes, its <size> says {resource.size}"
    if resource.digest is not None:
        actual = hashlib.sha1(content, usedforsecurity=False).hexdigest()
        if actual != resource.digest.lower():
            return f"its SHA-1 is {actual}, its <digest> says {resource.digest}"
    return None


def _broadcast_language(tag: str) -> str:
    """The tag as terminals take it (primary subtag lower case), or zh-CN when it cannot be."""
    primary, _, rest = tag.partition("-")
    normalised = primary.lower() + (f"-{rest}" if rest else "")
    return normalised if _LANGUAGE.match(normalised) else "zh-CN"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
