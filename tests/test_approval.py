"""The two-person rule, exercises and tests, the confirmation in words, cancel and false-alarm
correction: through real HTTP, a real broker and simulated terminals."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from controller.accounts import Role
from controller.audit import AuditRecord
from controller.embedded_broker import EmbeddedBroker
from controller.models import Broadcast, Delivery
from controller.regions import villages_under
from tests.conftest import make_settings
from tests.live import LiveServer, eventually, http_client, specs_in

TINGSIQIAO = "421202100"  # 汀泗桥镇
HESHENGQIAO = "421202104"  # 贺胜桥镇, another township


@pytest.fixture
async def live(database_url: str, embedded_broker: EmbeddedBroker) -> AsyncIterator[LiveServer]:
    settings = make_settings(
        database_url,
        embedded_broker.url,
        approval_levels=[1, 2],
        approval_timeout_s=5,
        broadcasts_per_minute=30,
    )
    async with LiveServer(settings) as server:
        yield server


async def villages(live: LiveServer, township: str, n: int) -> list[str]:
    rows = await live.controller.writer.call(lambda session: villages_under(session, township))
    return [v.code for v in rows[:n]]


def alert(villages: list[str], level: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "emergency",
        "level": level,
        "event": "洪水",
        "regions": villages,
        "text": "汀泗河水位超警戒，请沿河群众立即转移。",
        "expires_in": 600,
    } | extra


async def confirmed(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Preview a request, then send it with the preview's confirmation, as the console does."""
    preview = await client.post("/api/v1/broadcasts/preview", json=body)
    assert preview.status_code == 200, preview.text
    sent = await client.post(
        "/api/v1/broadcasts", json=body | {"confirmation": preview.json()["confirmation"]}
    )
    assert sent.status_code == 201, sent.text
    result: dict[str, Any] = sent.json()
    return result


async def test_a_level_ii_alert_waits_for_a_second_person_then_reaches_every_terminal(
    live: LiveServer,
) -> None:
    targets = await villages(live, TINGSIQIAO, 3)
    specs = specs_in(targets)
    await live.register(specs)
    operator = await live.account("wang", Role.OPERATOR, TINGSIQIAO)
    approver = await live.account("li", Role.APPROVER)
    neighbour = await live.account("zhao", Role.APPROVER, HESHENGQIAO)
    viewer = await live.account("chen", Role.VIEWER)

    preview = await operator.post("/api/v1/broadcasts/preview", json=alert(targets))
    words = preview.json()
    assert words["needs_approval"] and words["terminals"] == 3 and words["villages"] == 3
    assert "Level II (重大, orange) 洪水 emergency broadcast" in words["summary"]
    assert "3 villages in 1 townships, 3 terminals" in words["summary"]
    assert "ACTUAL — not a drill" in words["summary"] and "second person's approval" in words["summary"]
    assert (
        "II级（重大，橙色）洪水应急广播" in words["summary_zh"]
        and "真实发布，不是演练" in words["summary_zh"]
    )

    unconfirmed = await operator.post("/api/v1/broadcasts", json=alert(targets))
    assert unconfirmed.status_code == 428 and "3 terminals" in unconfirmed.json()["detail"]
    forged = await operator.post("/api/v1/broadcasts", json=alert(targets, confirmation="0" * 20))
    assert forged.status_code == 428

    async with live.fleet(specs):
        await eventually(lambda: all(live.controller.presence_of(s.terminal_id) == "online" for s in specs))
        held = await confirmed(operator, alert(targets))
        assert held["state"] == "awaiting_approval" and held["approval_deadline"] is not None
        report = await live.report(held["id"])
        assert report["created_by"] == "wang" and sum(report["counts"].values()) == 0

        for who, why in ((operator, "approver role"), (viewer, "approver role"), (neighbour, "outside")):
            refused = await who.post(f"/api/v1/broadcasts/{held['id']}/approve")
            assert refused.status_code == 403 and why in refused.text, refused.text
        approved = await approver.post(f"/api/v1/broadcasts/{held['id']}/approve")
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] == "active"
        report = await live.report_when(held["id"], lambda r: r["state"] == "finished")
    assert report["counts"]["completed"] == 3 and report["decided_by"] == "li"
    again = await approver.post(f"/api/v1/broadcasts/{held['id']}/approve")
    assert again.status_code == 409 and "not awaiting approval" in again.text

    with Session(live.controller.engine) as session:
        trail = session.exec(select(AuditRecord).where(AuditRecord.object_id == held["id"])).all()
    assert [(r.action, r.actor) for r in trail] == [("broadcast.create", "wang"), ("broadcast.approve", "li")]
    assert trail[0].detail["awaiting_approval"] is True and trail[0].detail["level"] == 2


async def test_nobody_approves_their_own_alert(live: LiveServer) -> None:
    targets = await villages(live, TINGSIQIAO, 1)
    await live.register(specs_in(targets))
    approver = await live.account("li", Role.APPROVER)
    held = await confirmed(approver, alert(targets, level=1))
    assert held["state"] == "awaiting_approval"
    own = await approver.post(f"/api/v1/broadcasts/{held['id']}/approve")
    assert own.status_code == 403 and "your own" in own.json()["detail"]


async def test_machine_clients_need_approval_too_and_a_rejected_alert_is_never_sent(live: LiveServer) -> None:
    targets = await villages(live, TINGSIQIAO, 1)
    await live.register(specs_in(targets))
    upstream = http_client(live.http.base_url, **{"X-API-Key": await live.api_key("cap-feed", Role.OPERATOR)})
    async with upstream:
        held = (await upstream.post("/api/v1/broadcasts", json=alert(targets, level=1))).json()
    assert held["state"] == "awaiting_approval"
    approver = await live.account("li", Role.APPROVER)
    rejected = await approver.post(f"/api/v1/broadcasts/{held['id']}/reject", json={"reason": "未经核实"})
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    assert (await approver.post(f"/api/v1/broadcasts/{held['id']}/approve")).status_code == 409
    update = await live.http.post(f"/api/v1/broadcasts/{held['id']}/update", json=alert(targets, level=3))
    assert update.status_code == 409 and "never sent" in update.text
    with Session(live.controller.engine) as session:
        assert session.exec(select(Delivery).where(Delivery.broadcast_id == held["id"])).all() == []


async def test_an_approval_not_given_in_time_lapses(live: LiveServer) -> None:
    targets = await villages(live, TINGSIQIAO, 1)
    await live.register(specs_in(targets))
    held = await live.send(**alert(targets))
    assert held["state"] == "awaiting_approval"

    async def lapsed() -> bool:
        report = await live.report(held["id"])
        return bool(report["state"] == "approval_expired")

    await eventually(lapsed, timeout=20)
    approver = await live.account("li", Role.APPROVER)
    late = await approver.post(f"/api/v1/broadcasts/{held['id']}/approve")
    assert late.status_code == 409 and "not awaiting approval" in late.text


async def test_withdrawing_a_held_alert_cancels_it_with_nothing_sent(live: LiveServer) -> None:
    targets = await villages(live, TINGSIQIAO, 1)
    await live.register(specs_in(targets))
    operator = await live.account("wang", Role.OPERATOR, TINGSIQIAO)
    held = await confirmed(operator, alert(targets))
    withdrawn = await operator.post(f"/api/v1/broadcasts/{held['id']}/cancel")
    assert withdrawn.status_code == 202 and withdrawn.json()["state"] == "cancelled"
    assert (await live.report(held["id"]))["finished_at"] is not None


@pytest.mark.parametrize("status", ["exercise", "test"])
async def test_exercises_and_tests_never_wait_and_are_marked_on_the_wire(
    live: LiveServer, status: str
) -> None:
    targets = await villages(live, TINGSIQIAO, 2)
    specs = specs_in(targets)
    await live.register(specs)
    operator = await live.account("wang", Role.OPERATOR, TINGSIQIAO)
    async with live.fleet(specs):
        await eventually(lambda: all(live.controller.presence_of(s.terminal_id) == "online" for s in specs))
        preview = (
            await operator.post("/api/v1/broadcasts/preview", json=alert(targets, 1, status=status))
        ).json()
        assert not preview["needs_approval"] and status.upper() in preview["summary"]
        sent = await operator.post("/api/v1/broadcasts", json=alert(targets, level=1, status=status))
        assert sent.status_code == 201, sent.text
        assert sent.json()["status"] == status and sent.json()["state"] == "active"
        report = await live.report_when(sent.json()["id"], lambda r: r["state"] == "finished")
    assert report["status"] == status and report["counts"]["completed"] == 2
    with Session(live.controller.engine) as session:
        broadcast = session.get(Broadcast, sent.json()["id"])
        assert broadcast is not None
        assert json.loads(broadcast.command)["status"] == status


async def test_level_iii_goes_out_at_once_but_still_needs_its_confirmation(live: LiveServer) -> None:
    targets = await villages(live, TINGSIQIAO, 1)
    await live.register(specs_in(targets))
    operator = await live.account("wang", Role.OPERATOR, TINGSIQIAO)
    assert (await operator.post("/api/v1/broadcasts", json=alert(targets, level=3))).status_code == 428
    sent = await confirmed(operator, alert(targets, level=3))
    assert sent["state"] == "active"


async def test_a_confirmation_is_void_once_the_target_has_changed(live: LiveServer) -> None:
    targets = await villages(live, TINGSIQIAO, 1)
    await live.register(specs_in(targets))
    operator = await live.account("wang", Role.OPERATOR, TINGSIQIAO)
    body = alert(targets, level=3)
    preview = (await operator.post("/api/v1/broadcasts/preview", json=body)).json()
    await live.register(specs_in(targets, per_village=2))  # a second terminal in the village since
    stale = await operator.post("/api/v1/broadcasts", json=body | {"confirmation": preview["confirmation"]})
    assert stale.status_code == 428 and "2 terminals" in stale.json()["detail"]


async def test_a_false_alarm_is_corrected_in_one_step_on_every_terminal(live: LiveServer) -> None:
    targets = await villages(live, TINGSIQIAO, 2)
    specs = specs_in(targets)
    await live.register(specs)
    operator = await live.account("wang", Role.OPERATOR, TINGSIQIAO)
    other = await live.account("zhang", Role.OPERATOR, TINGSIQIAO)
    async with live.fleet(specs, playback_s=30):
        await eventually(lambda: all(live.controller.presence_of(s.terminal_id) == "online" for s in specs))
        sent = await confirmed(operator, alert(targets, level=3))
        await live.report_when(sent["id"], lambda r: r["counts"]["playing"] == 2)

        assert (await other.post(f"/api/v1/broadcasts/{sent['id']}/false-alarm")).status_code == 403
        corrected = await operator.post(f"/api/v1/broadcasts/{sent['id']}/false-alarm")
        assert corrected.status_code == 201, corrected.text
        correction = corrected.json()
        assert correction["correction_of"] == sent["id"] and correction["supersedes"] == sent["id"]
        old = await live.report_when(sent["id"], lambda r: r["counts"]["cancelled"] == 2)
        assert old["state"] == "superseded" and old["superseded_by"] == correction["id"]
        new = await live.report_when(correction["id"], lambda r: r["counts"]["playing"] == 2)
    assert (
        new["level"] == 3 and new["text"].startswith("误报更正") and "III级洪水预警信息为误报" in new["text"]
    )
    assert new["created_by"] == "wang"


async def test_an_approver_corrects_an_alert_that_is_over_with_a_linked_broadcast(live: LiveServer) -> None:
    targets = await villages(live, TINGSIQIAO, 1)
    specs = specs_in(targets)
    await live.register(specs)
    operator = await live.account("wang", Role.OPERATOR, TINGSIQIAO)
    approver = await live.account("li", Role.APPROVER)
    async with live.fleet(specs):
        await eventually(lambda: all(live.controller.presence_of(s.terminal_id) == "online" for s in specs))
        sent = await confirmed(
            operator, alert(targets, level=4, language="en", text="Flood warning", event="flood")
        )
        await live.report_when(sent["id"], lambda r: r["state"] == "finished")
        corrected = await approver.post(
            f"/api/v1/broadcasts/{sent['id']}/false-alarm", json={"text": "更正：刚才的预警是误报。"}
        )
        assert corrected.status_code == 201, corrected.text
        report = await live.report_when(corrected.json()["id"], lambda r: r["state"] == "finished")
    assert report["supersedes"] is None and report["correction_of"] == sent["id"]
    assert report["text"] == "更正：刚才的预警是误报。" and report["created_by"] == "li"
