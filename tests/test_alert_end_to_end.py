"""An alert travels from the API over a real broker to simulated terminals and back into the database."""

from sqlmodel import Session, select

from controller.delivery import DeliveryState
from controller.models import Delivery
from controller.regions import villages_under
from tests.live import LiveServer, eventually, specs_in

XIANAN = "421202"


async def villages(live: LiveServer, region: str) -> list[str]:
    rows = await live.controller.writer.call(lambda session: villages_under(session, region))
    return [v.code for v in rows]


async def test_county_alert_reaches_every_terminal_of_xianan_and_all_complete(live: LiveServer) -> None:
    specs = specs_in(await villages(live, XIANAN), per_village=1)
    assert len(specs) == 197
    await live.register(specs)
    async with live.fleet(specs):
        await eventually(lambda: all(live.controller.presence_of(s.terminal_id) == "online" for s in specs))
        accepted = await live.send(
            kind="emergency",
            level=2,
            regions=[XIANAN],
            text="汀泗河水位超警戒，请沿河群众立即转移。",
            expires_in=300,
        )
        assert accepted["terminals"] == 197
        report = await live.report_when(accepted["id"], lambda r: r["state"] == "finished", timeout=60)

    assert report["counts"]["completed"] == 197
    assert sum(report["counts"].values()) == 197
    assert set(report["counts"]) == {state.value for state in DeliveryState}
    assert report["unacknowledged"] == [] and report["failures"] == []
    townships = {row["code"]: row for row in report["by_region"]}
    assert len(townships) == 17 and all(len(code) == 9 for code in townships)  # 咸安区 has 17 townships
    assert townships["421202100"]["name"] == "汀泗桥镇"
    assert sum(row["terminals"] for row in townships.values()) == 197
    with Session(live.controller.engine) as session:
        rows = session.exec(select(Delivery).where(Delivery.broadcast_id == accepted["id"])).all()
    assert len(rows) == 197
    assert all(row.state == "completed" for row in rows)
    assert all(row.sent_at and row.received_at and row.playing_at and row.finished_at for row in rows)
    assert all(row.received_at <= row.playing_at <= row.finished_at for row in rows)  # type: ignore[operator]


async def test_terminal_that_never_connected_is_listed_as_unacknowledged_with_why(live: LiveServer) -> None:
    specs = specs_in(await villages(live, "421202100"), per_village=1)[:3]
    await live.register(specs)
    async with live.fleet(specs[:2]):
        await eventually(
            lambda: all(live.controller.presence_of(s.terminal_id) == "online" for s in specs[:2])
        )
        accepted = await live.send(kind="notice", regions=["421202100"], text="明早停水通知", expires_in=300)
        report = await live.report_when(accepted["id"], lambda r: r["counts"]["completed"] == 2)

    assert report["state"] == "active"
    assert report["counts"]["sent"] == 1
    [silent] = report["unacknowledged"]
    assert silent["id"] == specs[2].terminal_id
    assert silent["presence"] == "unknown"
    assert "never connected" in silent["why"] and silent["silent"] is True


async def test_terminal_coming_online_later_still_gets_the_pending_alert(live: LiveServer) -> None:
    specs = specs_in(await villages(live, "421202101"), per_village=1)[:2]
    await live.register(specs)
    async with live.fleet(specs[:1]):
        await eventually(lambda: live.controller.presence_of(specs[0].terminal_id) == "online")
        accepted = await live.send(
            kind="emergency", level=3, regions=["421202101"], text="大风预警", expires_in=300
        )
        await live.report_when(accepted["id"], lambda r: r["counts"]["completed"] == 1)
        async with live.fleet(specs[1:]):
            report = await live.report_when(accepted["id"], lambda r: r["state"] == "finished")
    assert report["counts"]["completed"] == 2


async def test_alert_expiring_before_a_terminal_answers_marks_it_expired(live: LiveServer) -> None:
    specs = specs_in(await villages(live, "421202102"), per_village=1)[:2]
    await live.register(specs)
    async with live.fleet(specs[:1]):
        await eventually(lambda: live.controller.presence_of(specs[0].terminal_id) == "online")
        accepted = await live.send(kind="programme", regions=["421202102"], text="农技课堂", expires_in=2)
        report = await live.report_when(accepted["id"], lambda r: r["state"] == "expired", timeout=15)
    assert report["counts"]["completed"] == 1
    assert report["counts"]["expired"] == 1
    assert [t["id"] for t in report["unacknowledged"]] == [specs[1].terminal_id]
    assert report["unacknowledged_total"] == 1


async def test_report_lists_are_capped_but_totals_count_everyone(live: LiveServer) -> None:
    specs = specs_in(await villages(live, "421202107"), per_village=1)[:6]
    await live.register(specs)
    accepted = await live.send(kind="notice", regions=["421202107"], text="通知", expires_in=60)
    response = await live.http.get(f"/api/v1/broadcasts/{accepted['id']}", params={"list_limit": 2})
    report = response.json()
    assert report["unacknowledged_total"] == 6 and len(report["unacknowledged"]) == 2


async def test_alert_to_a_region_without_terminals_is_finished_at_once(live: LiveServer) -> None:
    accepted = await live.send(kind="notice", regions=["421202107"], text="无终端的镇", expires_in=60)
    assert (accepted["terminals"], accepted["state"]) == (0, "finished")
    await live.report_when(accepted["id"], lambda r: r["state"] == "finished" and r["terminals"] == 0)


async def test_terminal_switched_on_before_registration_is_online_once_registered(live: LiveServer) -> None:
    specs = specs_in(await villages(live, "421202105"), per_village=1)[:1]
    async with live.fleet(specs):
        await live.register(specs)
        await eventually(lambda: live.controller.presence_of(specs[0].terminal_id) == "online")
        accepted = await live.send(kind="notice", regions=["421202105"], text="开会", expires_in=60)
        report = await live.report_when(accepted["id"], lambda r: r["counts"]["completed"] == 1)
    assert report["unacknowledged"] == []
