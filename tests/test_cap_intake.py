"""CAP messages received over HTTP (`POST /api/v1/cap`): stored as received, acted on like an
operator's request, through a real server, broker, database and simulated terminals."""

import base64
import hashlib
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlmodel import Session, select

from controller.accounts import Role
from controller.audit import search
from controller.media import inspect_audio
from controller.models import Broadcast, CapMessage, Delivery
from devices.messages import Command, decode, now_utc
from tests.builders import tone
from tests.cap_builders import area_xml, cap_xml, info_xml, resource_xml
from tests.conftest import make_settings
from tests.live import LiveServer, specs_in

CORPUS = Path(__file__).parent / "data" / "cap"
SENDER = "qxj@xianning.gov.cn"
VILLAGES = ["421202104001", "421202104215"]  # two villages of 马桥镇
TOWNSHIP = "421202104"
CST = timezone(timedelta(hours=8))


def cap_time(hours: float = 0.0) -> str:
    """A CAP time (with its offset, no fraction) `hours` from now."""
    return (now_utc() + timedelta(hours=hours)).astimezone(CST).isoformat(timespec="seconds")


def flood(
    identifier: str,
    *,
    msg_type: str = "Alert",
    references: tuple[str, ...] = (),
    severity: str = "Moderate",
    headline: str = "暴雨黄色预警",
    areas: tuple[str, ...] | None = None,
    resources: tuple[str, ...] = (),
    status: str = "Actual",
    sender: str = SENDER,
    sent: str | None = None,
    effective: str | None = None,
) -> bytes:
    """A heavy-rain alert for 马桥镇's two test villages, expiring in an hour."""
    info = info_xml(
        severity=severity,
        headline=headline,
        effective=effective,
        expires=cap_time(1),
        resources=resources,
        areas=areas
        if areas is not None
        else (area_xml("马桥镇", geocodes=tuple(("China-admin", v) for v in VILLAGES)),),
    )
    return cap_xml(
        info,
        identifier=identifier,
        sender=sender,
        sent=sent or cap_time(),
        msg_type=msg_type,
        status=status,
        references=" ".join(references) or None,
    )


def reference(message: bytes) -> str:
    """The `references` entry naming a message built here."""
    text = message.decode()
    part = {tag: text.split(f"<{tag}>")[1].split(f"</{tag}>")[0] for tag in ("sender", "identifier", "sent")}
    return f"{part['sender']},{part['identifier']},{part['sent']}"


@pytest.fixture
async def upstream(live: LiveServer) -> httpx.AsyncClient:
    """The county's upstream warning system: an operator's API key over the county."""
    key = await live.api_key("weather-bureau", Role.OPERATOR)
    return _client(live, key)


def _client(live: LiveServer, key: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(
        base_url=live.http.base_url,
        timeout=30,
        headers={"X-API-Key": key, "Content-Type": "application/cap+xml"},
    )
    live._clients.append(client)
    return client


async def post(client: httpx.AsyncClient, message: bytes) -> httpx.Response:
    return await client.post("/api/v1/cap", content=message)


async def broadcast(live: LiveServer, broadcast_id: str) -> Broadcast:
    def read(session: Session) -> Broadcast:
        found = session.get(Broadcast, broadcast_id)
        assert found is not None
        return found

    return await live.controller.writer.call(read)


async def test_an_alert_its_two_updates_and_its_cancel_drive_one_broadcast(
    live: LiveServer, upstream: httpx.AsyncClient
) -> None:
    specs = specs_in(VILLAGES)
    await live.register(specs)
    async with live.fleet(specs, playback_s=30):
        alert = flood("XN-2026-101", headline="暴雨黄色预警")
        answer = await post(upstream, alert)
        assert answer.status_code == 201, answer.text
        first = answer.json()
        assert first["outcome"] == "broadcast" and first["identifier"] == "XN-2026-101"
        (b1,) = first["broadcasts"]
        await live.report_when(b1, lambda r: r["counts"]["playing"] == 2)

        update1 = flood(
            "XN-2026-102",
            msg_type="Update",
            references=(reference(alert),),
            severity="Severe",
            headline="暴雨橙色预警",
        )
        answer = await post(upstream, update1)
        assert answer.status_code == 201, answer.text
        assert answer.json()["outcome"] == "update"
        (b2,) = answer.json()["broadcasts"]
        await live.report_when(b2, lambda r: r["counts"]["playing"] == 2)
        old = await live.report_when(b1, lambda r: r["counts"]["cancelled"] == 2)
        assert old["state"] == "superseded" and old["superseded_by"] == b2

        # As Taiwan's CWA does: the second update names the alert and the first update.
        update2 = flood(
            "XN-2026-103",
            msg_type="Update",
            references=(reference(alert), reference(update1)),
            severity="Extreme",
            headline="暴雨红色预警",
        )
        answer = await post(upstream, update2)
        assert answer.status_code == 201, answer.text
        (b3,) = answer.json()["broadcasts"]
        await live.report_when(b3, lambda r: r["counts"]["playing"] == 2)

        cancel = cap_xml(
            identifier="XN-2026-104", sent=cap_time(), msg_type="Cancel", references=reference(update2)
        )
        answer = await post(upstream, cancel)
        assert answer.status_code == 202, answer.text
        assert answer.json()["outcome"] == "cancel" and answer.json()["broadcasts"] == [b3]
        last = await live.report_when(b3, lambda r: r["counts"]["cancelled"] == 2)
    assert last["state"] == "cancelled"
    chain = [await broadcast(live, b) for b in (b1, b2, b3)]
    assert [b.supersedes for b in chain] == [None, b1, b2]
    assert [b.level for b in chain] == [3, 2, 1]
    assert [b.text.split("\n")[0] if b.text else None for b in chain] == [
        "暴雨黄色预警",
        "暴雨橙色预警",
        "暴雨红色预警",
    ]
    assert all(b.created_by == "key:weather-bureau" and b.event == "暴雨" for b in chain)

    listed = (await live.http.get("/api/v1/cap/messages")).json()
    assert [(m["identifier"], m["outcome"], m["broadcasts"]) for m in listed] == [
        ("XN-2026-104", "cancel", [b3]),
        ("XN-2026-103", "update", [b3]),
        ("XN-2026-102", "update", [b2]),
        ("XN-2026-101", "broadcast", [b1]),
    ]
    raw = await live.http.get(f"/api/v1/cap/messages/{first['message_id']}/raw")
    assert raw.content == alert and raw.headers["content-type"] == "application/cap+xml"


async def test_the_same_message_is_acted_on_once_and_an_identifier_is_not_reused(
    live: LiveServer, upstream: httpx.AsyncClient
) -> None:
    await live.register(specs_in(VILLAGES))
    alert = flood("XN-2026-201")
    first = await post(upstream, alert)
    again = await post(upstream, alert)
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["broadcasts"] == first.json()["broadcasts"]
    assert again.json()["message_id"] == first.json()["message_id"]

    other = flood("XN-2026-201", headline="另一条消息")
    refused = await post(upstream, other)
    assert refused.status_code == 409, refused.text
    assert "already sent a different message with identifier XN-2026-201" in refused.json()["detail"]
    broadcasts = (await live.http.get("/api/v1/broadcasts")).json()
    assert len(broadcasts) == 1
    kept = (await live.http.get(f"/api/v1/cap/messages/{refused.json()['message_id']}")).json()
    assert kept["outcome"] == "rejected" and kept["kept"] is True


BAD: list[tuple[str, bytes, int, str]] = [
    (
        "malformed",
        b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><sender>x</sendr></alert>",
        422,
        "not well-formed XML",
    ),
    (
        "external entity",
        b'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "http://127.0.0.1:9/">]>'
        b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">&x;</alert>',
        422,
        "a DOCTYPE is not allowed",
    ),
    ("wrong namespace", cap_xml(namespace="urn:example:alert"), 422, "not a CAP 1.2 alert"),
    ("CAP 1.1", cap_xml(namespace="urn:oasis:names:tc:emergency:cap:1.1"), 422, "CAP 1.1 is not supported"),
    ("missing scope", (CORPUS / "38_INVALID_missing-required-scope.xml").read_bytes(), 422, "Element 'info'"),
    (
        "unknown references",
        cap_xml(
            identifier="XN-2026-301",
            msg_type="Update",
            references="qxj@xianning.gov.cn,XN-2025-999,2025-01-01T00:00:00+08:00",
        ),
        422,
        "the Update refers to no message we have",
    ),
]


@pytest.mark.parametrize(("name", "message", "code", "reason"), BAD, ids=[b[0] for b in BAD])
async def test_a_bad_message_is_refused_with_its_reason_and_kept(
    live: LiveServer, upstream: httpx.AsyncClient, name: str, message: bytes, code: int, reason: str
) -> None:
    answer = await post(upstream, message)
    assert answer.status_code == code, answer.text
    assert reason in answer.json()["detail"]
    kept = (await live.http.get(f"/api/v1/cap/messages/{answer.json()['message_id']}")).json()
    assert kept["outcome"] == "rejected" and reason in kept["reason"]
    assert (await live.http.get(f"/api/v1/cap/messages/{kept['id']}/raw")).content == message
    assert (await live.http.get("/api/v1/broadcasts")).json() == []
    trail = await live.controller.writer.call(lambda s: search(s, action="cap.receive", limit=5))
    assert trail[0].outcome == "failed" and trail[0].detail["reason"] == kept["reason"]


async def test_a_message_over_the_size_limit_is_refused_unread_and_its_bytes_not_kept(
    database_url: str, embedded_broker: Any
) -> None:
    settings = make_settings(database_url, embedded_broker.url, cap_max_bytes=4096)
    async with LiveServer(settings) as live:
        upstream = _client(live, await live.api_key("weather-bureau", Role.OPERATOR))
        big = flood("XN-2026-401", headline="大" * 3000)
        answer = await post(upstream, big)
        assert answer.status_code == 413, answer.text
        assert answer.json()["detail"] == f"the message is {len(big)} bytes; the limit is 4096"
        kept = (await live.http.get(f"/api/v1/cap/messages/{answer.json()['message_id']}")).json()
        assert kept["kept"] is False and kept["size"] == len(big)
        assert kept["sha256"] == hashlib.sha256(big).hexdigest()
        assert (await live.http.get(f"/api/v1/cap/messages/{kept['id']}/raw")).status_code == 404
        # Far over: cut off as it arrives, before the controller sees it.
        huge = await post(upstream, b"<" * (4096 + 70 * 1024))
        assert huge.status_code == 413


async def test_people_send_alerts_from_the_console_not_as_cap(live: LiveServer) -> None:
    operator = await live.account("operator-zhang", Role.OPERATOR)
    answer = await operator.post("/api/v1/cap", content=flood("XN-2026-501"))
    assert answer.status_code == 403 and "API key" in answer.json()["detail"]
    viewer = _client(live, await live.api_key("downstream", Role.VIEWER))
    assert (await post(viewer, flood("XN-2026-502"))).status_code == 403


async def test_a_township_key_broadcasts_only_within_its_township(live: LiveServer) -> None:
    await live.register(specs_in([*VILLAGES, "421202100001"]))
    township = _client(live, await live.api_key("maqiao-station", Role.OPERATOR, TOWNSHIP))
    county_wide = flood("XN-2026-601", areas=(area_xml("咸宁市", geocodes=(("GB/T 2260", "421200"),)),))
    answer = await post(township, county_wide)
    assert answer.status_code == 201, answer.text
    made = await broadcast(live, answer.json()["broadcasts"][0])
    assert made.regions == [TOWNSHIP] and made.issuer_region == TOWNSHIP and made.terminals == 2
    elsewhere = flood("XN-2026-602", areas=(area_xml("汀泗桥镇", geocodes=(("China-admin", "421202100"),)),))
    answer = await post(township, elsewhere)
    assert answer.status_code == 202 and answer.json()["outcome"] == "store_only"
    assert "none of its areas" in answer.json()["reason"]


async def test_a_polygon_selects_the_terminals_inside_it(
    live: LiveServer, upstream: httpx.AsyncClient
) -> None:
    specs = specs_in([*VILLAGES, "421202100001", "421202100004"], per_village=2)
    await live.register(specs)
    inside = [s for s in specs if s.region == VILLAGES[0]]
    lats = [s.position[0] for s in inside]
    lons = [s.position[1] for s in inside]
    south, north, west, east = min(lats) - 0.0005, max(lats) + 0.0005, min(lons) - 0.0005, max(lons) + 0.0005
    assert not any(
        south <= s.position[0] <= north and west <= s.position[1] <= east for s in specs if s not in inside
    )
    ring = f"{south},{west} {north},{west} {north},{east} {south},{east} {south},{west}"
    message = flood("XN-2026-701", areas=(area_xml("马桥镇沿河", polygons=(ring,), geocodes=()),))
    answer = await post(upstream, message)
    assert answer.status_code == 201, answer.text
    made = await broadcast(live, answer.json()["broadcasts"][0])
    assert sorted(made.terminal_ids or []) == sorted(s.terminal_id for s in inside)
    assert made.regions == []


async def test_a_live_level_one_alert_waits_for_a_second_person(
    database_url: str, embedded_broker: Any
) -> None:
    settings = make_settings(database_url, embedded_broker.url, approval_levels=[1, 2])
    async with LiveServer(settings) as live:
        await live.register(specs_in(VILLAGES))
        upstream = _client(live, await live.api_key("weather-bureau", Role.OPERATOR))
        answer = await post(upstream, flood("XN-2026-801", severity="Extreme"))
        assert answer.status_code == 201, answer.text
        assert answer.json()["state"] == "awaiting_approval"
        (held,) = answer.json()["broadcasts"]
        approver = await live.account("approver-li", Role.APPROVER)
        approved = await approver.post(f"/api/v1/broadcasts/{held}/approve")
        assert approved.status_code == 200, approved.text
        drill = await post(upstream, flood("XN-2026-802", severity="Extreme", status="Exercise"))
        assert drill.status_code == 201 and drill.json()["state"] != "awaiting_approval"


async def test_embedded_audio_becomes_what_terminals_play(
    live: LiveServer, upstream: httpx.AsyncClient
) -> None:
    await live.register(specs_in(VILLAGES))
    audio = tone()
    resource = resource_xml(
        "audio/x-wav",
        deref=base64.b64encode(audio).decode(),
        size=len(audio),
        digest=hashlib.sha1(audio, usedforsecurity=False).hexdigest(),
    )
    answer = await post(upstream, flood("XN-2026-901", resources=(resource,)))
    assert answer.status_code == 201, answer.text
    command = decode(Command, (await broadcast(live, answer.json()["broadcasts"][0])).command)
    assert command.content.audio is not None
    assert command.content.audio.sha256 == hashlib.sha256(audio).hexdigest()
    served = await live.http.get("/media/" + command.content.audio.url.rsplit("/", 1)[1])
    assert served.content == audio


async def test_audio_by_uri_is_fetched_and_a_failed_fetch_leaves_the_text(
    live: LiveServer, upstream: httpx.AsyncClient
) -> None:
    await live.register(specs_in(VILLAGES))
    info = inspect_audio(tone(), 1 << 20)
    live.controller.media.put(tone(), info)
    media = f"{live.http.base_url}/media/{info.name}"
    answer = await post(upstream, flood("XN-2026-951", resources=(resource_xml("audio/x-wav", uri=media),)))
    assert answer.status_code == 201, answer.text
    command = decode(Command, (await broadcast(live, answer.json()["broadcasts"][0])).command)
    assert (
        command.content.audio is not None
        and command.content.audio.sha256 == hashlib.sha256(tone()).hexdigest()
    )

    missing = f"{live.http.base_url}/media/{'0' * 64}.wav"
    answer = await post(upstream, flood("XN-2026-952", resources=(resource_xml("audio/x-wav", uri=missing),)))
    assert answer.status_code == 201, answer.text
    assert any("HTTP 404" in note for note in answer.json()["notes"])
    command = decode(Command, (await broadcast(live, answer.json()["broadcasts"][0])).command)
    assert command.content.text is not None and command.content.text.startswith("暴雨黄色预警")


async def test_the_senders_rate_limit_holds_for_cap(database_url: str, embedded_broker: Any) -> None:
    settings = make_settings(database_url, embedded_broker.url, broadcasts_per_minute=2)
    async with LiveServer(settings) as live:
        await live.register(specs_in(VILLAGES))
        upstream = _client(live, await live.api_key("weather-bureau", Role.OPERATOR))
        codes = [(await post(upstream, flood(f"XN-2026-96{n}"))).status_code for n in range(3)]
        assert codes == [201, 201, 429]


# What each message of the real corpus becomes when posted today, in order: every alert in it
# expired years ago, and none of its areas is in the test county (no geocode table, no terminal
# positions there), so those it keeps are kept only; the invalid ones are refused.
NOT_HERE = (202, "none of its areas is in this county or reaches one of our terminals")
CORPUS_ANSWERS = {
    "01_": NOT_HERE,
    "02_": NOT_HERE,
    "03_": (422, "the Update refers to no message we have"),
    "04_": NOT_HERE,
    "07_": (422, "the Cancel refers to no message we have"),
    "08_": NOT_HERE,
    "09_": NOT_HERE,
    "11_": (422, "the Update refers to no message we have"),
    "12_": (422, "the Update refers to no message we have"),
    "14_": (422, "CAP 1.1 is not supported"),
    "15_": NOT_HERE,
    "16_": (422, "the Update refers to no message we have"),
    "18_": (422, "an Update must name the message(s) it replaces"),
    "19_": NOT_HERE,
    # It updates #19, which was kept: it reaches nowhere here either, so it would end #19's
    # broadcast, and #19 made none.
    "20_": (202, "the messages it cancels were not broadcast here: nothing to cancel"),
    "23_": NOT_HERE,
    "25_": NOT_HERE,
    "29_": NOT_HERE,
    "31_": NOT_HERE,
    "34_": NOT_HERE,
    "35_": NOT_HERE,
    "38_": (422, "not valid CAP 1.2"),
}


async def test_every_real_message_is_answered_and_kept(live: LiveServer, upstream: httpx.AsyncClient) -> None:
    files = sorted(CORPUS.glob("*.xml"))
    assert sorted(CORPUS_ANSWERS) == sorted(path.name[:3] for path in files)
    for path in files:
        answer = await post(upstream, path.read_bytes())
        code, reason = CORPUS_ANSWERS[path.name[:3]]
        assert answer.status_code == code, (path.name, answer.text)
        body = answer.json()
        assert reason in (body.get("reason") or body.get("detail")), (path.name, body)

    def count(session: Session) -> int:
        return len(session.exec(select(CapMessage)).all())

    assert await live.controller.writer.call(count) == len(files)
    assert (await live.http.get("/api/v1/broadcasts")).json() == []


async def test_an_alert_effective_later_goes_out_at_that_time(
    live: LiveServer, upstream: httpx.AsyncClient
) -> None:
    specs = specs_in(VILLAGES)
    await live.register(specs)
    async with live.fleet(specs):
        answer = await post(upstream, flood("XN-2026-A01", effective=cap_time(3 / 3600)))
        assert answer.status_code == 201, answer.text
        (broadcast_id,) = answer.json()["broadcasts"]
        made = await broadcast(live, broadcast_id)
        assert made.not_before is not None and answer.json()["state"] == "accepted"
        page = await live.http.get(f"/broadcasts/{broadcast_id}", headers={"Accept-Language": "en"})
        shown = made.not_before.astimezone(ZoneInfo(live.controller.settings.timezone))
        assert f'<dd id="goes-out-at">{shown:%Y-%m-%d %H:%M:%S}</dd>' in page.text, page.text
        early = await live.report(broadcast_id)
        assert early["counts"].get("received", 0) == 0 and early["counts"].get("completed", 0) == 0
        await live.report_when(broadcast_id, lambda r: r["counts"].get("completed", 0) == 2)

    def heard(session: Session) -> list[Any]:
        query = select(Delivery.received_at).where(Delivery.broadcast_id == broadcast_id)
        return list(session.exec(query).all())

    times = await live.controller.writer.call(heard)
    assert len(times) == 2 and all(t is not None and t >= made.not_before for t in times)


async def test_an_alert_effective_later_still_goes_out_after_a_restart(
    database_url: str, embedded_broker: Any
) -> None:
    settings = make_settings(database_url, embedded_broker.url)
    specs = specs_in(VILLAGES)
    async with LiveServer(settings) as live:
        await live.register(specs)
        upstream = _client(live, await live.api_key("weather-bureau", Role.OPERATOR))
        answer = await post(upstream, flood("XN-2026-A02", effective=cap_time(4 / 3600)))
        assert answer.status_code == 201, answer.text
        (broadcast_id,) = answer.json()["broadcasts"]
    async with LiveServer(settings) as again, again.fleet(specs):
        early = await again.report(broadcast_id)
        assert early["counts"].get("received", 0) == 0
        await again.report_when(broadcast_id, lambda r: r["counts"].get("completed", 0) == 2)
