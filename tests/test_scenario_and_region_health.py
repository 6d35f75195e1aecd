"""Scripted faults in the simulator, and the region health they show: the silent villages of 咸安区."""

from pathlib import Path
from typing import Any

import pytest

from controller.regions import villages_under
from simulator.fleet import Condition
from simulator.scenario import FaultEvent, FaultKind, Scenario, ScenarioError, load_scenario
from tests.live import LiveServer, eventually, specs_in

STORM = Path(__file__).parent.parent / "deploy" / "scenarios" / "xianan-storm.toml"


def test_the_shipped_scenario_parses_in_time_order() -> None:
    scenario = load_scenario(STORM)
    assert [e.fault for e in scenario.event][:2] == [FaultKind.POWER_OFF, FaultKind.SPEAKER_FAULT]
    assert scenario.event == sorted(scenario.event, key=lambda e: e.at)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[event]]\nfault = 'explode'\n", "event.0.fault"),
        ("[[event]]\nfault = 'slow'\nseconds = -1\n", "event.0.seconds"),
        ("[[event]]\nfault = 'slow'\ncolour = 'red'\n", "event.0.colour"),
        ("[[event]\n", "Expected"),
    ],
)
def test_a_bad_scenario_says_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path)


def test_events_match_by_id_pattern_and_region_and_add_up() -> None:
    event = FaultEvent(terminals="sim-4212021*-1", region="421202100", fault=FaultKind.SPEAKER_FAULT)
    assert event.matches("sim-421202100001-1", "421202100001")
    assert not event.matches("sim-421202100001-2", "421202100001")
    assert not event.matches("sim-421202101001-1", "421202101001")
    faulty = event.applied_to(Condition())
    on_battery = FaultEvent(fault=FaultKind.ON_BATTERY, battery_pct=20).applied_to(faulty)
    assert on_battery.silent and on_battery.battery_pct == 20
    assert FaultEvent(fault=FaultKind.HEALTHY).applied_to(on_battery) == Condition()


async def test_silent_villages_of_xianan_match_the_storm_scenario(live: LiveServer) -> None:
    villages = await live.controller.writer.call(lambda s: villages_under(s, "421202"))
    specs = specs_in([v.code for v in villages])
    await live.register(specs)
    dark = {v.code for v in villages if v.code.startswith("421202100")}
    expected = dark | {"421202101001"}

    async with live.fleet(specs, heartbeat_interval_s=30, scenario=load_scenario(STORM)):

        async def storm_seen() -> bool:
            health = (await live.http.get("/api/v1/regions/421202/health")).json()
            return {v["code"] for v in health["silent_villages"]} == expected

        await eventually(storm_seen, timeout=30)
        health: dict[str, Any] = (await live.http.get("/api/v1/regions/421202/health")).json()
        alarms = (await live.http.get("/api/v1/alarms", params={"active": True, "limit": 1000})).json()

    assert health["controller_connected"] is True
    totals = health["totals"]
    assert totals["terminals"] == len(specs) and totals["lost"] == len(dark) and totals["faulty"] == 1
    assert totals["working"] == len(specs) - len(expected)
    why = {v["code"]: v["why"] for v in health["silent_villages"]}
    assert why["421202101001"] == "1 with a speaker or amplifier fault"
    assert all(why[code] == "1 connection lost" for code in dark)
    [tingsi] = [c for c in health["children"] if c["code"] == "421202100"]
    assert tingsi["name"] == "汀泗桥镇" and tingsi["lost"] == tingsi["terminals"] == len(dark)
    kinds = {(a["terminal_id"], a["kind"]) for a in alarms}
    assert ("sim-421202101001-1", "speaker_fault") in kinds
    assert ("sim-421202103001-1", "low_signal") in kinds
    guanbu = sum(1 for v in villages if v.code.startswith("421202102"))
    assert sum(1 for _, kind in kinds if kind == "on_battery") == guanbu


async def test_region_health_of_an_unknown_region_is_404(live: LiveServer) -> None:
    assert (await live.http.get("/api/v1/regions/421202199/health")).status_code == 404


async def test_a_flapping_terminal_is_reported_as_flapping_not_as_a_storm(live: LiveServer) -> None:
    specs = specs_in(["421202100005"])
    await live.register(specs)
    terminal = specs[0].terminal_id
    flapping = Scenario(event=[FaultEvent(fault=FaultKind.FLAPPING, period_s=1.0)])
    async with live.fleet(specs, scenario=flapping):

        async def flagged() -> bool:
            return bool((await live.http.get(f"/api/v1/terminals/{terminal}")).json()["flapping"])

        await eventually(flagged, timeout=20)

        def flapped_on() -> bool:
            entry = live.controller.presence.get(terminal)
            return entry is not None and len(entry.changes) >= 8

        await eventually(flapped_on, timeout=20)
        await live.controller.writer.flush()
        history = (await live.http.get(f"/api/v1/terminals/{terminal}")).json()["presence_history"]
    reasons = [h["reason"] for h in reversed(history)]
    assert reasons.count("flapping") == 1
    assert len(reasons) == reasons.index("flapping") + 1
