"""CAP 1.2 out: every broadcast as CAP, and the Atom feed of current alerts.

Each exported message must pass our own ingest's checks (the OASIS schema through `parse_cap`,
the spec's rules through `read_alert`) and, mapped by `decide` with the same settings, give back
the broadcast it came from: kind, level, status, event, target, text, language and expiry. The
broadcasts are made through the API of a live server (real broker, real database), except for the
level tables, which are exercised on stored broadcasts built in memory.
"""

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from lxml import etree
from sqlmodel import Session

from controller.accounts import Role
from controller.broadcasts import BroadcastRequest, build_command, new_broadcast_id
from controller.cap import (
    CapAlert,
    CapBroadcast,
    CapCancel,
    CapDecision,
    CapReference,
    CapRules,
    CapStoreOnly,
    CapUpdate,
    LevelRule,
    TerminalPosition,
    decide,
    parse_cap,
    read_alert,
)
from controller.cap.atom import ATOM_NAMESPACE
from controller.cap.export import (
    AREA_TERMINALS_NAMED,
    AlertContext,
    CapPublisher,
    category,
    choose_triple,
    export_alert,
    to_bytes,
)
from controller.cap.model import Certainty, Severity, Urgency
from controller.cap.parse import CAP12_NAMESPACE
from controller.embedded_broker import EmbeddedBroker
from controller.models import Broadcast, BroadcastState
from devices.messages import encode, now_utc
from tests.builders import tone
from tests.conftest import make_settings
from tests.live import LiveServer, http_client, specs_in

VILLAGES = ["421202100001", "421202100004"]
TOWNSHIP = "421202100"  # 汀泗桥镇
OTHER_TOWNSHIP = "421202101"  # 向阳湖镇
MAX_BYTES = 1024 * 1024
FLOOD: dict[str, Any] = {
    "kind": "emergency",
    "level": 2,
    "event": "洪水",
    "regions": [TOWNSHIP],
    "text": "汀泗河洪水橙色预警：请沿河村民立即转移到高处。",
    "expires_in": 600,
}
NS = {"cap": CAP12_NAMESPACE, "atom": ATOM_NAMESPACE}
RULES = CapRules(county_region="421202")
PUBLISHER = CapPublisher("cunxiang-421202", ZoneInfo("Asia/Shanghai"), RULES)


# --- helpers ------------------------------------------------------------------------------------------


def read(data: bytes) -> CapAlert:
    """The alert as our ingest reads it: schema and spec rules, or CapRejected."""
    return read_alert(parse_cap(data, MAX_BYTES))


def decided(
    alert: CapAlert,
    rules: CapRules,
    terminals: Sequence[TerminalPosition] = (),
    known: Sequence[CapReference] = (),
) -> CapDecision:
    return decide(alert, rules=rules, terminals=terminals, known=known, now=now_utc())


def assert_same_broadcast(decision: CapDecision, broadcast: Broadcast) -> None:
    """The decision would send `broadcast` again (a programme comes back as a notice)."""
    assert isinstance(decision, CapBroadcast), decision
    request = decision.request
    kind = "emergency" if broadcast.kind == "emergency" else "notice"
    assert (request.kind.value, request.level) == (kind, broadcast.level)
    assert request.status.value == broadcast.status
    assert request.event == (broadcast.event or request.event)
    assert request.regions == broadcast.regions
    assert request.language == "zh-CN"
    # Our ingest makes whitespace runs single spaces (CAP texts are often hard-wrapped), and says
    # the event of a message without text.
    assert request.text == (" ".join(broadcast.text.split()) if broadcast.text else request.event)
    assert request.expires_at == broadcast.expires_at.replace(microsecond=0)


def stored_broadcast(
    request: BroadcastRequest,
    *,
    terminal_ids: list[str] | None = None,
    state: BroadcastState = BroadcastState.ACTIVE,
) -> Broadcast:
    """A broadcast as the controller stores it, without a server: its command built the same way."""
    now = now_utc()
    command = build_command(
        request, broadcast_id=new_broadcast_id(now), county_region="421202", now=now, max_expires_in=86_400
    )
    return Broadcast(
        id=command.id,
        kind=command.kind.value,
        level=command.level,
        issuer_region=command.issuer_region,
        regions=list(request.regions),
        terminal_ids=terminal_ids,
        text=request.text,
        event=request.event,
        priority=command.priority,
        issued_at=command.issued_at,
        expires_at=command.expires_at,
        state=state,
        command=encode(command).decode(),
        status=command.status.value,
    )


def flood(**changes: Any) -> BroadcastRequest:
    return BroadcastRequest.model_validate(FLOOD | changes)


async def stored(live: LiveServer, broadcast_id: str) -> Broadcast:
    def get(session: Session) -> Broadcast:
        broadcast = session.get(Broadcast, broadcast_id)
        assert broadcast is not None
        return broadcast

    return await live.controller.writer.call(get)


async def cap_of(live: LiveServer, broadcast_id: str, **params: str) -> bytes:
    answer = await live.http.get(f"/api/v1/broadcasts/{broadcast_id}/cap", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/cap+xml"
    assert answer.content.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    return answer.content


# --- the level tables, on broadcasts built in memory ---------------------------------------------------

OUTCOMES = [
    pytest.param({"level": 1}, id="level 1"),
    pytest.param({"level": 2}, id="level 2"),
    pytest.param({"level": 3}, id="level 3"),
    pytest.param({"level": 4}, id="level 4"),
    pytest.param({"kind": "notice", "level": None}, id="notice"),
    pytest.param({"kind": "programme", "level": None}, id="programme"),
]
# A table deciding by urgency alone: the default table's natural choices all read back as level 1.
BY_URGENCY = CapRules(
    county_region="421202",
    level_rules=(
        LevelRule(urgency=frozenset({Urgency.IMMEDIATE}), outcome=1),
        LevelRule(urgency=frozenset({Urgency.EXPECTED}), outcome=2),
        LevelRule(urgency=frozenset({Urgency.FUTURE}), outcome=3),
        LevelRule(urgency=frozenset({Urgency.PAST}), outcome="notice"),
        LevelRule(outcome=4),
    ),
)


@pytest.mark.parametrize("changes", OUTCOMES)
def test_every_level_and_a_notice_read_back_the_same_through_the_default_table(
    changes: dict[str, Any],
) -> None:
    broadcast = stored_broadcast(flood(**changes))

    alert = read(to_bytes(export_alert(broadcast, PUBLISHER, AlertContext({TOWNSHIP: "汀泗桥镇"}))))

    assert_same_broadcast(decided(alert, RULES), broadcast)


@pytest.mark.parametrize("changes", OUTCOMES)
def test_every_level_and_a_notice_read_back_the_same_through_a_custom_table(changes: dict[str, Any]) -> None:
    publisher = CapPublisher(PUBLISHER.sender, PUBLISHER.timezone, BY_URGENCY)
    broadcast = stored_broadcast(flood(**changes))

    alert = read(to_bytes(export_alert(broadcast, publisher, AlertContext({}))))

    assert_same_broadcast(decided(alert, BY_URGENCY), broadcast)


def test_the_natural_severity_is_chosen_where_the_table_gives_it() -> None:
    assert [choose_triple(RULES, outcome) for outcome in (1, 2, 3, 4, "notice")] == [
        (Severity.EXTREME, Urgency.IMMEDIATE, Certainty.OBSERVED),
        (Severity.SEVERE, Urgency.IMMEDIATE, Certainty.OBSERVED),
        (Severity.MODERATE, Urgency.IMMEDIATE, Certainty.OBSERVED),
        (Severity.MINOR, Urgency.IMMEDIATE, Certainty.OBSERVED),
        (Severity.MINOR, Urgency.FUTURE, Certainty.LIKELY),
    ]
    assert choose_triple(BY_URGENCY, 2) == (Severity.EXTREME, Urgency.EXPECTED, Certainty.OBSERVED)


def test_a_level_the_table_never_gives_is_exported_with_its_natural_severity() -> None:
    never_one = CapRules(county_region="421202", level_rules=(LevelRule(outcome=4),))

    assert choose_triple(never_one, 1) == (Severity.EXTREME, Urgency.IMMEDIATE, Certainty.OBSERVED)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("洪水", "Met"),
        ("汀泗河暴雨", "Met"),
        ("Flooding", "Met"),
        ("地震", "Geo"),
        ("森林火灾", "Fire"),
        ("Wildfire", "Fire"),
        ("新冠疫情", "Health"),
        ("Staff training", "Other"),
        ("村民大会", "Other"),
    ],
)
def test_the_category_comes_from_a_keyword_in_the_event(event: str, expected: str) -> None:
    assert category(event) == expected


def test_times_are_in_the_county_zone_with_a_numeric_offset_to_the_second() -> None:
    broadcast = stored_broadcast(flood())
    utc = CapPublisher(PUBLISHER.sender, ZoneInfo("UTC"), RULES)

    shanghai = read(to_bytes(export_alert(broadcast, PUBLISHER, AlertContext({}))))
    in_utc = etree.fromstring(to_bytes(export_alert(broadcast, utc, AlertContext({}))))

    assert shanghai.sent == broadcast.issued_at.replace(microsecond=0)
    assert shanghai.sent.isoformat().endswith("+08:00")
    assert shanghai.infos[0].expires == broadcast.expires_at.replace(microsecond=0)
    assert str(in_utc.findtext("cap:sent", namespaces=NS)).endswith("+00:00")


@pytest.mark.parametrize("state", ["awaiting_approval", "rejected", "approval_expired"])
def test_a_broadcast_never_sent_is_a_draft_that_no_receiver_plays(state: str) -> None:
    broadcast = stored_broadcast(flood(), state=BroadcastState(state))

    alert = read(to_bytes(export_alert(broadcast, PUBLISHER, AlertContext({}))))

    assert alert.status.value == "Draft"
    assert alert.note == f"never sent ({state}): this actual broadcast reached no terminal"
    assert isinstance(decided(alert, RULES), CapStoreOnly)


def test_characters_xml_cannot_carry_are_left_out_of_the_text() -> None:
    broadcast = stored_broadcast(flood(text="停水\x07通知\x00"))

    alert = read(to_bytes(export_alert(broadcast, PUBLISHER, AlertContext({}))))

    assert alert.infos[0].description == "停水通知"


def test_an_area_of_many_terminals_names_the_first_and_counts_the_rest() -> None:
    positions = [TerminalPosition(f"t-{i}", 29.7 + i / 1000, 114.3) for i in range(25)]
    broadcast = stored_broadcast(flood(regions=[], terminals=[p.terminal_id for p in positions]))

    alert = read(to_bytes(export_alert(broadcast, PUBLISHER, AlertContext({}, positions))))

    (area,) = alert.infos[0].areas
    assert area.description.startswith("终端：t-0, t-1, ")
    assert area.description.endswith(f", t-{AREA_TERMINALS_NAMED - 1}等5个终端")
    assert len(area.circles) == 25


# --- through the API of a live server ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(FLOOD, id="emergency"),
        pytest.param(FLOOD | {"kind": "notice", "level": None, "event": "停水"}, id="notice"),
        pytest.param(FLOOD | {"status": "exercise", "text": "演练：洪水转移\n请按路线撤离"}, id="exercise"),
        pytest.param(FLOOD | {"status": "test", "level": 4}, id="test"),
    ],
)
async def test_an_exported_broadcast_reads_back_as_the_same_broadcast(
    live: LiveServer, body: dict[str, Any]
) -> None:
    broadcast = await stored(live, (await live.send(**body))["id"])

    alert = read(await cap_of(live, broadcast.id))

    assert (alert.identifier, alert.sender, alert.msg_type.value) == (
        broadcast.id,
        "cunxiang-421202",
        "Alert",
    )
    assert alert.infos[0].areas[0].description == "汀泗桥镇"
    assert_same_broadcast(decided(alert, live.settings.cap_rules), broadcast)


async def test_an_update_refers_to_the_broadcast_it_replaced(live: LiveServer) -> None:
    first = (await live.send(**FLOOD))["id"]
    answer = await live.http.post(f"/api/v1/broadcasts/{first}/update", json=FLOOD | {"level": 1})
    assert answer.status_code == 201, answer.text
    update = await stored(live, answer.json()["id"])

    earlier = read(await cap_of(live, first))
    alert = read(await cap_of(live, update.id))

    assert alert.msg_type.value == "Update"
    assert alert.references == [earlier.reference]
    decision = decided(alert, live.settings.cap_rules, known=[earlier.reference])
    assert isinstance(decision, CapUpdate) and decision.replaces == [earlier.reference]
    assert_same_broadcast(decision, update)


async def test_audio_is_a_resource_a_receiver_can_fetch(live: LiveServer) -> None:
    audio = tone()
    uploaded = await live.http.post(
        "/api/v1/programmes/upload", data={"title": "汛期提示"}, files={"file": ("tone.wav", audio)}
    )
    assert uploaded.status_code == 201, uploaded.text
    sent = await live.send(
        kind="notice", regions=[TOWNSHIP], programme_id=uploaded.json()["id"], expires_in=600
    )

    alert = read(await cap_of(live, sent["id"]))

    (resource,) = alert.infos[0].resources
    assert (resource.mime_type, resource.size) == ("audio/wav", len(audio))
    assert resource.uri is not None and resource.uri.startswith(f"{live.settings.media_url}/")
    # The settings name the configured port; the test's server listens on a free one.
    assert (await live.http.get(urlsplit(resource.uri).path)).content == audio
    decision = decided(alert, live.settings.cap_rules)
    assert isinstance(decision, CapBroadcast)
    assert decision.audio is not None and decision.audio.uri == resource.uri
    assert_same_broadcast(decision, await stored(live, sent["id"]))


async def test_terminals_of_a_group_are_circles_at_their_positions(live: LiveServer) -> None:
    specs = specs_in(VILLAGES)
    await live.register(specs)
    registered = await live.http.post("/api/v1/terminals", json=[{"id": "t-unplaced", "region": VILLAGES[0]}])
    assert registered.status_code == 200, registered.text
    members = [s.terminal_id for s in specs] + ["t-unplaced"]
    group = await live.http.put("/api/v1/groups/riverside", json={"name": "沿河喇叭", "terminals": members})
    assert group.status_code == 201, group.text
    broadcast = await stored(
        live, (await live.send(**FLOOD | {"regions": [], "groups": ["riverside"]}))["id"]
    )

    alert = read(await cap_of(live, broadcast.id))

    (area,) = alert.infos[0].areas
    assert [circle.centre for circle in area.circles] == [s.position for s in specs]
    assert {circle.radius_km for circle in area.circles} == {0}
    county = [TerminalPosition(s.terminal_id, *s.position) for s in specs]
    decision = decided(alert, live.settings.cap_rules, terminals=county)
    assert isinstance(decision, CapBroadcast)
    # A terminal without a recorded position cannot be written in CAP.
    assert decision.request.terminals == [s.terminal_id for s in specs]
    assert broadcast.terminal_ids == sorted(members)
    assert_same_broadcast(decision, broadcast)


async def test_a_cancelled_broadcast_is_still_what_it_was_and_its_cancel_refers_to_it(
    live: LiveServer,
) -> None:
    await live.register(specs_in(VILLAGES))  # terminals that never answer: it is still going
    broadcast_id = (await live.send(**FLOOD))["id"]
    refused = await live.http.get(f"/api/v1/broadcasts/{broadcast_id}/cap", params={"message": "cancel"})
    assert refused.status_code == 409, refused.text
    assert (await live.http.post(f"/api/v1/broadcasts/{broadcast_id}/cancel")).status_code == 202

    alert = read(await cap_of(live, broadcast_id))
    cancel = read(await cap_of(live, broadcast_id, message="cancel"))

    assert (alert.msg_type.value, alert.status.value) == ("Alert", "Actual")
    assert cancel.msg_type.value == "Cancel" and cancel.identifier != broadcast_id
    assert cancel.references == [alert.reference]
    decision = decided(cancel, live.settings.cap_rules, known=[alert.reference])
    assert isinstance(decision, CapCancel) and decision.cancels == [alert.reference]


async def test_an_unknown_broadcast_is_404(live: LiveServer) -> None:
    answer = await live.http.get("/api/v1/broadcasts/20260101T000000-000000000000/cap")

    assert answer.status_code == 404


# --- the feed ------------------------------------------------------------------------------------------


@pytest.fixture
async def held_live(database_url: str, embedded_broker: EmbeddedBroker) -> AsyncIterator[LiveServer]:
    """A server holding live level I alerts for approval, with a sender of its own."""
    settings = make_settings(database_url, embedded_broker.url, approval_levels=[1], cap_sender="xianan-yjgb")
    async with LiveServer(settings) as server:
        yield server


def one(parent: etree._Element, path: str) -> etree._Element:
    found = parent.find(path, NS)
    assert found is not None, path
    return found


async def feed(client: httpx.AsyncClient) -> etree._Element:
    answer = await client.get("/api/v1/cap/feed")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/atom+xml"
    return etree.fromstring(answer.content)


async def test_the_feed_lists_current_alerts_only_newest_first_each_alert_inside(
    held_live: LiveServer,
) -> None:
    live = held_live
    send = live.send
    await live.register(specs_in(VILLAGES))  # terminals that never answer: cancelling has work to do
    expired = await send(**FLOOD | {"expires_in": 1})
    cancelled = (await send(**FLOOD))["id"]
    assert (await live.http.post(f"/api/v1/broadcasts/{cancelled}/cancel")).status_code == 202
    await send(**FLOOD | {"level": 1})  # awaiting approval
    await send(kind="programme", regions=[TOWNSHIP], text="农技节目", expires_in=600)
    superseded = (await send(**FLOOD))["id"]
    update = await live.http.post(
        f"/api/v1/broadcasts/{superseded}/update", json=FLOOD | {"text": "水位回落"}
    )
    assert update.status_code == 201, update.text
    finished = (await send(**FLOOD | {"regions": [OTHER_TOWNSHIP]}))["id"]  # no terminals there
    await live.report_when(finished, lambda report: report["state"] == "finished")
    correction = await live.http.post(f"/api/v1/broadcasts/{finished}/false-alarm")
    assert correction.status_code == 201, correction.text
    notice = (await send(**FLOOD | {"kind": "notice", "level": None}))["id"]
    current = [notice, correction.json()["id"], update.json()["id"]]
    base = live.settings.base_url
    until = datetime.fromisoformat(expired["expires_at"]) - now_utc()
    await asyncio.sleep(until.total_seconds() + 0.05)

    root = await feed(live.http)

    assert root.findtext("atom:id", namespaces=NS) == "urn:cunxiang:xianan-yjgb:feed"
    assert one(root, "atom:link[@rel='self']").get("href") == f"{base}/api/v1/cap/feed"
    *entries, last = root.findall("atom:entry", NS)
    assert [e.findtext("atom:id", namespaces=NS) for e in entries] == [
        f"urn:cunxiang:xianan-yjgb:{broadcast_id}" for broadcast_id in current
    ]
    # The cancelled alert is there as its Cancel (sent before the others), until it would have expired.
    link = one(last, "atom:link[@rel='alternate']")
    assert link.get("href") == f"{base}/api/v1/broadcasts/{cancelled}/cap?message=cancel"
    (embedded,) = one(last, "atom:content")
    cancel = read(etree.tostring(embedded))
    assert cancel.msg_type.value == "Cancel" and [r.identifier for r in cancel.references] == [cancelled]
    assert last.findtext("atom:id", namespaces=NS) == f"urn:cunxiang:xianan-yjgb:{cancel.identifier}"
    for entry, broadcast_id in zip(entries, current, strict=True):
        link = one(entry, "atom:link[@rel='alternate']")
        assert (link.get("type"), link.get("href")) == (
            "application/cap+xml",
            f"{base}/api/v1/broadcasts/{broadcast_id}/cap",
        )
        content = one(entry, "atom:content")
        assert content.get("type") == "application/cap+xml"
        (embedded,) = content
        alert = read(etree.tostring(embedded))
        assert alert.identifier == broadcast_id
        assert entry.findtext("atom:title", namespaces=NS) == alert.infos[0].headline
        assert isinstance(decided(alert, live.settings.cap_rules, known=alert.references), CapBroadcast)


async def test_the_feed_holds_only_alerts_that_concern_the_caller(live: LiveServer) -> None:
    await live.send(**FLOOD)
    elsewhere = http_client(
        live.http.base_url, **{"X-API-Key": await live.api_key("b-viewer", Role.VIEWER, OTHER_TOWNSHIP)}
    )
    here = http_client(
        live.http.base_url, **{"X-API-Key": await live.api_key("a-viewer", Role.VIEWER, VILLAGES[0])}
    )
    async with elsewhere, here:
        assert (await feed(elsewhere)).findall("atom:entry", NS) == []
        assert len((await feed(here)).findall("atom:entry", NS)) == 1
