"""The priority rule through the whole system: API → controller → broker → simulated terminals → report.

Every ordered pair of broadcast classes (and, within a class, of issuing levels) is played on its
own terminal: the first is playing when the second arrives. The expectation is written from the
rule as the issue states it (level I > II > III > IV > notice > programme; among equals the wider
issuer wins; equal never interrupts), not computed with the code under test.
"""

from itertools import product
from typing import Any

from sqlmodel import select

from controller.models import Delivery
from tests.live import LiveServer, specs_in

VILLAGE = "421202105001"
TOWNSHIP = "421202105"
COUNTY = "421202"

# Highest first.
CLASSES: list[dict[str, Any]] = [
    {"kind": "emergency", "level": 1},
    {"kind": "emergency", "level": 2},
    {"kind": "emergency", "level": 3},
    {"kind": "emergency", "level": 4},
    {"kind": "notice"},
    {"kind": "programme"},
]
ISSUERS = [COUNTY, TOWNSHIP, VILLAGE]  # widest first

# (first, second, whether the second interrupts the first)
PAIRS: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    (CLASSES[a], CLASSES[b], b < a) for a, b in product(range(len(CLASSES)), repeat=2)
] + [
    ({**cls, "issuer_region": ISSUERS[a]}, {**cls, "issuer_region": ISSUERS[b]}, b < a)
    for cls in (CLASSES[1], CLASSES[4], CLASSES[5])
    for a, b in product(range(len(ISSUERS)), repeat=2)
]


async def test_every_pair_of_classes_and_issuers_preempts_or_is_rejected_busy(live: LiveServer) -> None:
    specs = specs_in([VILLAGE], per_village=len(PAIRS))
    await live.register(specs)
    async with live.fleet(specs, playback_s=60):
        firsts = []
        for spec, (first, _second, _wins) in zip(specs, PAIRS, strict=True):
            body = first | {"terminals": [spec.terminal_id], "text": "first", "expires_in": 300}
            firsts.append(await live.send(**body))
        for first in firsts:
            await live.report_when(first["id"], lambda r: r["counts"]["playing"] == 1, timeout=60)
        seconds = []
        for spec, (_first, second, _wins) in zip(specs, PAIRS, strict=True):
            body = second | {"terminals": [spec.terminal_id], "text": "second", "expires_in": 300}
            seconds.append(await live.send(**body))

        def answered(report: dict[str, Any]) -> bool:
            return bool(report["counts"]["playing"] + report["counts"]["rejected"] == 1)

        for second in seconds:
            await live.report_when(second["id"], answered, timeout=60)
        await live.controller.writer.flush()
        rows = await live.controller.writer.call(
            lambda session: {(d.broadcast_id, d.terminal_id): d for d in session.exec(select(Delivery)).all()}
        )
    wrong = []
    for spec, first, second, (one, two, wins) in zip(specs, firsts, seconds, PAIRS, strict=True):
        old, new = rows[(first["id"], spec.terminal_id)], rows[(second["id"], spec.terminal_id)]
        if wins:
            ok = (old.state, old.reason, old.by_command, new.state) == (
                "preempted",
                "higher_priority",
                second["id"],
                "playing",
            )
        else:
            ok = (old.state, new.state, new.reason, new.by_command) == (
                "playing",
                "rejected",
                "busy",
                first["id"],
            )
        if not ok:
            wrong.append((one, two, wins, old.state, new.state, new.reason))
    assert wrong == []


async def test_a_preempted_programme_resumes_and_completes_after_the_alert(live: LiveServer) -> None:
    specs = specs_in(["421202105003"], per_village=2)
    await live.register(specs)
    async with live.fleet(specs, playback_s=2.0):
        programme = await live.send(kind="programme", regions=["421202105003"], text="农技", expires_in=120)
        await live.report_when(programme["id"], lambda r: r["counts"]["playing"] == 2)
        alert = await live.send(
            kind="emergency", level=2, regions=["421202105003"], text="台风", expires_in=120
        )
        during = await live.report_when(programme["id"], lambda r: r["counts"]["preempted"] == 2)
        assert during["state"] == "active"
        await live.report_when(alert["id"], lambda r: r["state"] == "finished")
        after = await live.report_when(programme["id"], lambda r: r["state"] == "finished", timeout=30)
    assert after["counts"]["completed"] == 2 and after["not_played"] == []


async def test_a_preempted_notice_is_not_resumed_and_its_report_says_by_what(live: LiveServer) -> None:
    specs = specs_in(["421202105233"])
    await live.register(specs)
    async with live.fleet(specs, playback_s=2.0):
        notice = await live.send(kind="notice", regions=["421202105233"], text="通知", expires_in=120)
        await live.report_when(notice["id"], lambda r: r["counts"]["playing"] == 1)
        alert = await live.send(
            kind="emergency", level=4, regions=["421202105233"], text="大雾", expires_in=120
        )
        report = await live.report_when(notice["id"], lambda r: r["state"] == "finished")
    assert report["counts"]["preempted"] == 1
    village = report["not_played"][0]
    assert village["code"] == "421202105233" and village["township"] == TOWNSHIP and village["count"] == 1
    assert village["name"] and village["township_name"]
    assert village["terminals"][0]["why"] == f"pre-empted: higher_priority (by {alert['id']})"
    # The same in parts, for a reader in another language (the console says it in Chinese).
    parts = {k: village["terminals"][0][k] for k in ("silent", "reason", "detail", "by")}
    assert parts == {"silent": False, "reason": "higher_priority", "detail": None, "by": alert["id"]}
