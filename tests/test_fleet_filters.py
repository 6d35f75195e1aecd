"""`GET /api/v1/terminals` filtered by live presence, open alarms and kind, counting what matches."""

import pytest

from simulator.scenario import FaultEvent, FaultKind, Scenario
from tests.live import LiveServer, eventually, specs_in


async def test_terminals_are_filtered_by_presence_fault_and_kind_and_the_total_counts_the_matches(
    live: LiveServer,
) -> None:
    specs = specs_in(["421202100001", "421202100004", "421202100005"])
    faulty, unplugged, healthy = (s.terminal_id for s in specs)
    await live.register(specs)
    receiver = {"id": "rx-1", "region": "421202101001", "kind": "indoor_receiver"}
    assert (await live.http.post("/api/v1/terminals", json=[receiver])).status_code == 200
    scenario = Scenario(
        event=[
            FaultEvent(terminals=faulty, fault=FaultKind.SPEAKER_FAULT),
            FaultEvent(terminals=unplugged, fault=FaultKind.POWER_OFF),
        ]
    )
    async with live.fleet(specs, scenario=scenario):
        await eventually(
            lambda: (
                live.controller.presence_of(unplugged) == "lost"
                and bool(live.controller.alarms.active(faulty))
            )
        )

        async def listed(**params: object) -> tuple[list[str], int]:
            answer = await live.http.get("/api/v1/terminals", params=params)  # type: ignore[arg-type]
            assert answer.status_code == 200, answer.text
            return [t["id"] for t in answer.json()["items"]], answer.json()["total"]

        assert await listed(presence="online") == ([faulty, healthy], 2)
        assert await listed(presence="lost") == ([unplugged], 1)
        assert await listed(presence="unknown") == (["rx-1"], 1)
        assert await listed(presence="offline") == ([], 0)
        assert await listed(fault="true") == ([faulty], 1)
        assert await listed(fault="false", presence="online") == ([healthy], 1)
        assert await listed(kind="indoor_receiver") == (["rx-1"], 1)
        assert await listed(kind="outdoor_speaker", region="421202100") == ([faulty, unplugged, healthy], 3)
        assert await listed(presence="online", limit=1, offset=1) == ([healthy], 2)


@pytest.mark.parametrize("params", [{"presence": "asleep"}, {"fault": "maybe"}])
async def test_an_unknown_filter_value_is_refused(live: LiveServer, params: dict[str, str]) -> None:
    assert (await live.http.get("/api/v1/terminals", params=params)).status_code == 422
