"""Updates: a broadcast superseded by a new one (CAP's Update), through the API, the broker and terminals."""

from typing import Any

from sqlmodel import Session

from controller.models import Broadcast
from devices.messages import Command, decode
from tests.conftest import make_settings
from tests.live import LiveServer, specs_in

VILLAGES = ["421202104001", "421202104215"]
TOWNSHIP = "421202104"  # 马桥镇
FLOOD: dict[str, Any] = {"kind": "emergency", "level": 3, "text": "河水上涨，注意防范", "expires_in": 120}


async def update(live: LiveServer, broadcast_id: str, **body: Any) -> Any:
    return await live.http.post(f"/api/v1/broadcasts/{broadcast_id}/update", json=body)


async def stored_command(live: LiveServer, broadcast_id: str) -> Command:
    def read(session: Session) -> Command:
        broadcast = session.get(Broadcast, broadcast_id)
        assert broadcast is not None
        return decode(Command, broadcast.command)

    return await live.controller.writer.call(read)


async def test_update_replaces_the_alert_on_every_terminal_and_links_both(live: LiveServer) -> None:
    specs = specs_in(VILLAGES)
    await live.register(specs)
    async with live.fleet(specs, playback_s=30):
        first = await live.send(regions=VILLAGES, **FLOOD)
        await live.report_when(first["id"], lambda r: r["counts"]["playing"] == 2)
        wider = FLOOD | {"level": 2, "text": "立即转移", "regions": [TOWNSHIP]}
        response = await update(live, first["id"], **wider)
        assert response.status_code == 201, response.text
        second = response.json()
        assert second["supersedes"] == first["id"]
        new = await live.report_when(second["id"], lambda r: r["counts"]["playing"] == 2)
        old = await live.report_when(first["id"], lambda r: r["counts"]["cancelled"] == 2)
    assert old["state"] == "superseded" and old["superseded_by"] == second["id"]
    assert old["finished_at"] is not None
    assert [t["why"] for v in old["not_played"] for t in v["terminals"]] == [
        f"cancelled (by {second['id']})"
    ] * 2
    assert new["supersedes"] == first["id"] and new["regions"] == [TOWNSHIP]
    assert (await stored_command(live, second["id"])).supersedes == [first["id"]]


async def test_terminal_offline_during_the_update_never_plays_the_old_alert(live: LiveServer) -> None:
    specs = specs_in(VILLAGES)
    await live.register(specs)
    first = await live.send(regions=VILLAGES, **FLOOD)
    second = (await update(live, first["id"], **(FLOOD | {"regions": VILLAGES, "text": "更新"}))).json()
    async with live.fleet(specs) as fleet:
        new = await live.report_when(second["id"], lambda r: r["counts"]["completed"] == 2)
        old = await live.report_when(first["id"], lambda r: r["finished_at"] is not None)
        seen = sum(t.commands_seen for t in fleet.terminals)
    assert new["state"] == "finished"
    assert old["state"] == "superseded" and old["counts"]["cancelled"] == 2
    assert seen == 2


async def test_update_of_a_cancelled_or_already_updated_broadcast_is_409(live: LiveServer) -> None:
    specs = specs_in(VILLAGES[:1])
    await live.register(specs)
    cancelled = await live.send(regions=VILLAGES[:1], **FLOOD)
    assert (await live.http.post(f"/api/v1/broadcasts/{cancelled['id']}/cancel")).status_code == 202
    refused = await update(live, cancelled["id"], regions=VILLAGES[:1], **FLOOD)
    assert refused.status_code == 409 and "was cancelled" in refused.text

    first = await live.send(regions=VILLAGES[:1], **FLOOD)
    second = (await update(live, first["id"], regions=VILLAGES[:1], **FLOOD)).json()
    again = await update(live, first["id"], regions=VILLAGES[:1], **FLOOD)
    assert again.status_code == 409 and f"already updated by {second['id']}" in again.text
    cancel_old = await live.http.post(f"/api/v1/broadcasts/{first['id']}/cancel")
    assert cancel_old.status_code == 409 and "cancel that one" in cancel_old.text
    missing = await update(live, "20261127T000000-000000000000", regions=VILLAGES[:1], **FLOOD)
    assert missing.status_code == 404


async def test_update_that_would_leave_terminals_with_the_old_message_is_422(live: LiveServer) -> None:
    specs = specs_in(VILLAGES)
    await live.register(specs)
    first = await live.send(regions=VILLAGES, **FLOOD)
    narrower = await update(live, first["id"], regions=VILLAGES[:1], **FLOOD)
    assert narrower.status_code == 422
    assert "same target or wider" in narrower.text and specs[1].terminal_id in narrower.text
    assert (await live.report(first["id"]))["superseded_by"] is None


async def test_update_of_a_finished_broadcast_is_a_linked_new_broadcast(live: LiveServer) -> None:
    specs = specs_in(VILLAGES[:1])
    await live.register(specs)
    async with live.fleet(specs):
        first = await live.send(regions=VILLAGES[:1], **(FLOOD | {"kind": "notice", "level": None}))
        await live.report_when(first["id"], lambda r: r["state"] == "finished")
        response = await update(
            live, first["id"], regions=VILLAGES[:1], kind="notice", text="补充", expires_in=60
        )
        assert response.status_code == 201, response.text
        second = response.json()
        await live.report_when(second["id"], lambda r: r["state"] == "finished")
    old = await live.report(first["id"])
    assert old["state"] == "finished" and old["superseded_by"] == second["id"]
    assert (await stored_command(live, second["id"])).supersedes is None


async def test_update_of_an_update_also_ends_the_first_on_a_terminal_that_missed_the_middle_one(
    live: LiveServer,
) -> None:
    specs = specs_in(["421202104216"], per_village=2)
    await live.register(specs)
    present, away = specs
    target = {"terminals": [t.terminal_id for t in specs]}
    async with live.fleet([away], playback_s=60):
        first = await live.send(**target, **FLOOD)
        await live.report_when(first["id"], lambda r: r["counts"]["playing"] == 1)
    # `away` is gone, still "playing" the first as far as anyone knows; the second reaches only `present`.
    async with live.fleet([present], playback_s=60):
        second = (await update(live, first["id"], **target, **(FLOOD | {"text": "二"}))).json()
        await live.report_when(second["id"], lambda r: r["counts"]["playing"] == 1)
    third = (await update(live, second["id"], **target, **(FLOOD | {"text": "三"}))).json()
    assert (await stored_command(live, third["id"])).supersedes == [second["id"], first["id"]]
    async with live.fleet(specs, playback_s=0.3):
        await live.report_when(third["id"], lambda r: r["counts"]["completed"] == 2)
        old = await live.report_when(first["id"], lambda r: r["finished_at"] is not None)
        middle = await live.report_when(second["id"], lambda r: r["finished_at"] is not None)
    assert old["state"] == middle["state"] == "superseded"
    assert old["counts"]["cancelled"] == 2 and middle["counts"]["cancelled"] == 2


async def test_cancel_of_an_update_also_cancels_what_it_superseded_where_still_open(live: LiveServer) -> None:
    specs = specs_in(["421202104217"], per_village=2)
    await live.register(specs)
    target = {"terminals": [t.terminal_id for t in specs]}
    first = await live.send(**target, **FLOOD)
    second = (await update(live, first["id"], **target, **(FLOOD | {"text": "二"}))).json()
    response = await live.http.post(f"/api/v1/broadcasts/{second['id']}/cancel")
    assert response.status_code == 202, response.text
    async with live.fleet(specs) as fleet:
        old = await live.report_when(first["id"], lambda r: r["state"] == "cancelled")
        new = await live.report_when(second["id"], lambda r: r["state"] == "cancelled")
        played = sum(t.commands_seen for t in fleet.terminals)
    assert old["counts"]["cancelled"] == new["counts"]["cancelled"] == 2
    assert old["superseded_by"] == second["id"]
    assert played == 0


async def test_a_superseded_broadcast_still_open_is_followed_again_after_a_restart(
    database_url: str, mosquitto_url: str
) -> None:
    settings = make_settings(database_url, mosquitto_url)
    specs = specs_in(["421202104218"])
    async with LiveServer(settings) as live:
        await live.register(specs)
        first = await live.send(regions=["421202104218"], **FLOOD)
        second = (await update(live, first["id"], regions=["421202104218"], **FLOOD)).json()
    async with LiveServer(settings) as live:
        assert live.controller.tracker.find(first["id"]) is not None
        async with live.fleet(specs):
            await live.report_when(second["id"], lambda r: r["state"] == "finished")
            old = await live.report_when(first["id"], lambda r: r["finished_at"] is not None)
    assert old["state"] == "superseded" and old["counts"]["cancelled"] == 1
