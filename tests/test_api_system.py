"""Health, metrics, terminals and regions over HTTP."""

from controller.embedded_broker import EmbeddedBroker
from tests.conftest import make_settings
from tests.live import LiveServer, eventually, specs_in


async def test_healthz_is_ok_when_database_and_broker_answer(live: LiveServer) -> None:
    response = await live.http.get("/healthz")
    assert response.status_code == 200
    assert response.json()["mqtt"] == "connected" and response.json()["database"] == "ok"
    assert "speech" in response.json()


async def test_metrics_are_prometheus_text_without_terminal_ids(live: LiveServer) -> None:
    specs = specs_in(["421202100001"])
    await live.register(specs)
    async with live.fleet(specs):
        await eventually(lambda: live.controller.presence_of(specs[0].terminal_id) == "online")
        response = await live.http.get("/metrics")
    assert response.status_code == 200
    assert 'cunxiang_terminals{presence="online"} 1.0' in response.text
    assert "sim-421202100001" not in response.text


async def test_terminals_list_presence_and_filters_by_region(live: LiveServer) -> None:
    specs = specs_in(["421202100001", "421202100004", "421202101001"])
    await live.register(specs)
    async with live.fleet(specs[:2]):
        await eventually(lambda: live.controller.presence_of(specs[1].terminal_id) == "online")
        everything = (await live.http.get("/api/v1/terminals")).json()
        township = (await live.http.get("/api/v1/terminals", params={"region": "421202100"})).json()
    assert everything["total"] == 3
    presence = {t["id"]: t["presence"] for t in everything["items"]}
    assert presence == {
        specs[0].terminal_id: "online",
        specs[1].terminal_id: "online",
        specs[2].terminal_id: "unknown",
    }
    assert township["total"] == 2 and {t["region"] for t in township["items"]} == {
        "421202100001",
        "421202100004",
    }


async def test_terminal_that_disconnects_cleanly_shows_offline(live: LiveServer) -> None:
    specs = specs_in(["421202100001"])
    await live.register(specs)
    async with live.fleet(specs):
        await eventually(lambda: live.controller.presence_of(specs[0].terminal_id) == "online")
    await eventually(lambda: live.controller.presence_of(specs[0].terminal_id) == "offline")


async def test_presence_is_unknown_while_the_controller_is_cut_off(sqlite_url: str) -> None:
    broker = EmbeddedBroker("127.0.0.1", 0)
    broker.start()
    live = LiveServer(make_settings(sqlite_url, broker.url))
    await live.start()
    try:
        specs = specs_in(["421202100001", "421202100004"])
        await live.register(specs)
        async with live.fleet(specs[:1]):
            await eventually(lambda: live.controller.presence_of(specs[0].terminal_id) == "online")
            accepted = await live.send(kind="notice", regions=["421202100"], text="通知", expires_in=60)
            await live.report_when(accepted["id"], lambda r: r["counts"]["completed"] == 1)
            broker.stop()
            await eventually(lambda: not live.controller.connected)
            listed = (await live.http.get("/api/v1/terminals")).json()["items"]
            health = await live.http.get("/healthz")
            report = await live.report(accepted["id"])
            region = (await live.http.get("/api/v1/regions/421202100/health")).json()
        assert [t["presence"] for t in listed] == ["unknown", "unknown"]
        assert region["controller_connected"] is False and region["totals"]["unknown"] == 2
        assert region["totals"]["offline"] == 0 and region["totals"]["working"] == 0
        assert all(
            v["why"] == "unknown: the controller is cut off from the MQTT broker"
            for v in region["silent_villages"]
            if v["terminals"]
        )
        assert health.status_code == 503 and health.json()["mqtt"] == "disconnected"
        [silent] = report["unacknowledged"]
        assert silent["id"] == specs[1].terminal_id and "cut off from the MQTT broker" in silent["why"]
    finally:
        await live.stop()


async def test_region_lists_its_children(live: LiveServer) -> None:
    response = await live.http.get("/api/v1/regions/421202")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "咸安区" and len(body["children"]) == 17
    assert (await live.http.get("/api/v1/regions/421202999")).status_code == 404
    assert (await live.http.get("/api/v1/regions/429999")).status_code == 403  # outside the county
