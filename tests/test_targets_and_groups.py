"""Targets: regions at any level, named groups, single terminals; resolved and recorded at acceptance."""

from typing import Any

from tests.live import LiveServer, specs_in

GUANBUQIAO = "421202102"  # 官埠桥镇
VILLAGES = ["421202102001", "421202102002", "421202102003"]
ELSEWHERE = "421202103001"  # a village of 横沟桥镇


async def put_group(live: LiveServer, group_id: str, **body: Any) -> Any:
    return await live.http.put(f"/api/v1/groups/{group_id}", json={"name": group_id} | body)


async def test_group_is_created_replaced_listed_and_deleted(live: LiveServer) -> None:
    specs = specs_in(VILLAGES[:1])
    await live.register(specs)
    created = await put_group(live, "lushui-river", name="陆水河沿岸村", regions=VILLAGES[1:])
    assert created.status_code == 201, created.text
    assert created.json()["regions"] == VILLAGES[1:] and created.json()["name"] == "陆水河沿岸村"
    replaced = await put_group(live, "lushui-river", regions=[VILLAGES[1]], terminals=[specs[0].terminal_id])
    assert replaced.status_code == 200
    assert replaced.json()["terminals"] == [specs[0].terminal_id]
    listed = (await live.http.get("/api/v1/groups")).json()
    assert [g["id"] for g in listed] == ["lushui-river"]
    assert (await live.http.delete("/api/v1/groups/lushui-river")).status_code == 204
    assert (await live.http.get("/api/v1/groups/lushui-river")).status_code == 404
    assert (await live.http.delete("/api/v1/groups/lushui-river")).status_code == 404


async def test_group_with_unknown_members_or_bad_id_is_refused_clearly(live: LiveServer) -> None:
    unknown_region = await put_group(live, "g1", regions=["421202199999"])
    assert unknown_region.status_code == 422 and "unknown region code(s): 421202199999" in unknown_region.text
    unknown_terminal = await put_group(live, "g1", terminals=["nobody-1"])
    assert unknown_terminal.status_code == 422 and "unknown terminal(s): nobody-1" in unknown_terminal.text
    empty = await put_group(live, "g1")
    assert empty.status_code == 422 and "at least one region or terminal" in empty.text
    bad_id = await put_group(live, "Not A Slug", regions=VILLAGES[:1])
    assert bad_id.status_code == 422


async def test_broadcast_to_a_group_and_single_terminals_reaches_exactly_them(live: LiveServer) -> None:
    river = specs_in(VILLAGES[:2])
    single = specs_in([ELSEWHERE])
    bystander = specs_in([VILLAGES[2]])
    await live.register(river + single + bystander)
    assert (await put_group(live, "lushui-river", regions=VILLAGES[:2])).status_code == 201
    async with live.fleet(river + single + bystander) as fleet:
        accepted = await live.send(
            kind="emergency",
            level=2,
            groups=["lushui-river"],
            terminals=[single[0].terminal_id],
            text="陆水河水位上涨",
            expires_in=60,
        )
        assert accepted["terminals"] == 3
        report = await live.report_when(accepted["id"], lambda r: r["state"] == "finished")
        played = {t.spec.terminal_id for t in fleet.terminals if t.commands_seen}
    assert report["counts"]["completed"] == 3
    assert report["groups"] == ["lushui-river"]
    assert report["regions"] == VILLAGES[:2]
    assert report["terminal_ids"] == [single[0].terminal_id]
    assert played == {s.terminal_id for s in river + single}


async def test_a_group_changed_later_does_not_change_what_a_broadcast_reached(live: LiveServer) -> None:
    specs = specs_in(VILLAGES[:2])
    await live.register(specs)
    await put_group(live, "g", regions=VILLAGES[:1])
    accepted = await live.send(kind="notice", groups=["g"], text="x", expires_in=60)
    await put_group(live, "g", regions=VILLAGES)
    report = await live.report(accepted["id"])
    assert report["terminals"] == 1 and report["regions"] == VILLAGES[:1]


async def test_a_terminal_named_inside_a_target_region_is_sent_once_by_the_region(live: LiveServer) -> None:
    specs = specs_in(VILLAGES[:1], per_village=2)
    await live.register(specs)
    accepted = await live.send(
        kind="notice",
        regions=[GUANBUQIAO, VILLAGES[0]],
        terminals=[specs[0].terminal_id],
        text="x",
        expires_in=60,
    )
    report = await live.report(accepted["id"])
    assert report["terminals"] == 2
    assert report["regions"] == [GUANBUQIAO]
    assert report["terminal_ids"] is None


async def test_unknown_groups_and_terminals_are_refused_with_422(live: LiveServer) -> None:
    body: dict[str, Any] = {"kind": "notice", "text": "x", "expires_in": 60}
    no_group = await live.http.post("/api/v1/broadcasts", json=body | {"groups": ["nope"]})
    assert no_group.status_code == 422 and "unknown group(s): nope" in no_group.text
    no_terminal = await live.http.post("/api/v1/broadcasts", json=body | {"terminals": ["ghost-1"]})
    assert no_terminal.status_code == 422 and "unknown terminal(s): ghost-1" in no_terminal.text
    empty = await live.http.post("/api/v1/broadcasts", json=body)
    assert empty.status_code == 422 and "the target is empty" in empty.text


async def test_a_township_issuer_cannot_reach_the_next_township(live: LiveServer) -> None:
    specs = specs_in([ELSEWHERE])
    await live.register(specs)
    body: dict[str, Any] = {"kind": "notice", "text": "x", "expires_in": 60, "issuer_region": GUANBUQIAO}
    ok = await live.http.post("/api/v1/broadcasts", json=body | {"regions": VILLAGES[:1]})
    assert ok.status_code == 201, ok.text
    assert ok.json()["priority"] == 11
    neighbour = await live.http.post("/api/v1/broadcasts", json=body | {"regions": [ELSEWHERE]})
    assert neighbour.status_code == 422 and "outside the issuer's region 421202102" in neighbour.text
    by_terminal = await live.http.post(
        "/api/v1/broadcasts", json=body | {"terminals": [specs[0].terminal_id]}
    )
    assert by_terminal.status_code == 422 and "outside the issuer's region" in by_terminal.text
    foreign = await live.http.post(
        "/api/v1/broadcasts", json=body | {"issuer_region": "421281", "regions": ["421281"]}
    )
    assert foreign.status_code == 403 and "outside your region 421202" in foreign.text
