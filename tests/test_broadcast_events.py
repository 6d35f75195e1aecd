"""Live progress over Server-Sent Events: coverage climbs, then the final report."""

import json
from typing import Any

from controller.regions import villages_under
from tests.live import LiveServer, specs_in


async def read_events(live: LiveServer, broadcast_id: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    async with live.http.stream("GET", f"/api/v1/broadcasts/{broadcast_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if name == "end":
                    break
    return events


async def test_events_show_coverage_climbing_then_the_final_report(live: LiveServer) -> None:
    villages = await live.controller.writer.call(lambda s: villages_under(s, "421202100"))
    specs = specs_in([v.code for v in villages], per_village=1)
    await live.register(specs)
    async with live.fleet(specs, playback_s=1.0):
        accepted = await live.send(kind="emergency", level=2, regions=["421202"], text="洪水", expires_in=60)
        events = await read_events(live, accepted["id"])
    progress = [data for name, data in events if name == "progress"]
    name, final = events[-1]
    assert name == "end" and final["state"] == "finished"
    assert final["counts"]["completed"] == len(specs) and final["unacknowledged"] == []
    assert len(progress) >= 2
    completed = [p["counts"]["completed"] for p in progress]
    assert completed == sorted(completed) and completed[0] < len(specs)
    [township] = progress[-1]["by_region"]
    assert township["code"] == "421202100" and township["name"] == "汀泗桥镇"


async def test_events_of_a_finished_broadcast_end_at_once(live: LiveServer) -> None:
    accepted = await live.send(kind="notice", regions=["421202107"], text="无终端", expires_in=60)
    events = await read_events(live, accepted["id"])
    assert [name for name, _ in events] == ["end"]


async def test_events_of_an_unknown_broadcast_are_404(live: LiveServer) -> None:
    response = await live.http.get("/api/v1/broadcasts/nope/events")
    assert response.status_code == 404


async def test_events_of_a_superseded_broadcast_end_when_its_terminals_have_reported(
    live: LiveServer,
) -> None:
    specs = specs_in(["421202106001"])
    await live.register(specs)
    body: dict[str, Any] = {"kind": "notice", "regions": ["421202106001"], "expires_in": 60}
    async with live.fleet(specs, playback_s=30):
        first = await live.send(text="旧", **body)
        await live.report_when(first["id"], lambda r: r["counts"]["playing"] == 1)
        response = await live.http.post(
            f"/api/v1/broadcasts/{first['id']}/update", json=body | {"text": "新"}
        )
        assert response.status_code == 201
        events = await read_events(live, first["id"])
    name, final = events[-1]
    assert name == "end" and final["state"] == "superseded" and final["counts"]["cancelled"] == 1
