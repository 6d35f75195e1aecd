"""Bad input gets a clear error or is counted and ignored; it never stops the controller."""

from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest

from devices.messages import Ack, AckStage, encode
from tests.live import LiveServer, eventually, metric, metrics_text, specs_in


async def publish_raw(live: LiveServer, messages: list[tuple[str, bytes]]) -> None:
    bus = live.controller.bus
    assert bus is not None
    async with aiomqtt.Client(bus.address.host, bus.address.port, identifier="test-intruder") as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


async def test_malformed_and_unknown_mqtt_messages_are_counted_and_ignored(live: LiveServer) -> None:
    topics = live.topics
    someone = "sim-421202100200-9"
    stranger_ack = Ack(
        command_id="20261127T000000-000000000000",
        terminal_id=someone,
        stage=AckStage.RECEIVED,
        at=datetime.now(UTC),
    )
    await publish_raw(
        live,
        [
            (topics.terminal_ack(someone), b"\xff\xfe not json"),
            (topics.terminal_ack(someone), b"[1, 2, 3]"),
            (topics.terminal_ack(someone), b'{"v": 2, "command_id": "x"}'),
            (topics.terminal_ack(someone), b'{"v": 1, "stage": "received"}'),
            (topics.terminal_ack(someone), encode(stranger_ack)),
            (topics.terminal_ack("sim-other-1"), encode(stranger_ack)),
            (
                topics.terminal_status(someone),
                b'{"v": 1, "terminal_id": "' + someone.encode() + b'", '
                b'"state": "online", "session": 1, "region": "421202100200", "at": "2026-11-27T00:00:00Z"}',
            ),
            (f"{topics.root}/terminal/NOT_VALID/ack", b"{}"),
        ],
    )

    async def counted() -> bool:
        text = await metrics_text(live)
        return (
            sum(
                metric(text, "cunxiang_mqtt_messages_rejected_total", reason=r)
                for r in (
                    "bad_json",
                    "bad_payload",
                    "unsupported_version",
                    "unknown_command",
                    "terminal_mismatch",
                    "unknown_terminal",
                    "bad_terminal_id",
                )
            )
            == 8
        )

    await eventually(counted)
    text = await metrics_text(live)
    assert metric(text, "cunxiang_mqtt_messages_rejected_total", reason="bad_json") == 1
    assert metric(text, "cunxiang_mqtt_messages_rejected_total", reason="bad_payload") == 2
    assert metric(text, "cunxiang_mqtt_messages_rejected_total", reason="unsupported_version") == 1
    assert metric(text, "cunxiang_mqtt_messages_rejected_total", reason="unknown_command") == 1
    assert metric(text, "cunxiang_mqtt_messages_rejected_total", reason="terminal_mismatch") == 1
    assert metric(text, "cunxiang_mqtt_messages_rejected_total", reason="unknown_terminal") == 1
    assert metric(text, "cunxiang_mqtt_messages_rejected_total", reason="bad_terminal_id") == 1

    specs = specs_in(["421202100001"])
    await live.register(specs)
    async with live.fleet(specs):
        accepted = await live.send(
            kind="notice", regions=["421202100001"], text="still working", expires_in=60
        )
        report = await live.report_when(accepted["id"], lambda r: r["state"] == "finished")
    assert report["counts"]["completed"] == 1


async def test_duplicate_and_late_acks_do_not_move_a_finished_delivery(live: LiveServer) -> None:
    specs = specs_in(["421202100004"])
    await live.register(specs)
    async with live.fleet(specs):
        accepted = await live.send(kind="notice", regions=["421202100004"], text="dup", expires_in=60)
        await live.report_when(accepted["id"], lambda r: r["state"] == "finished")
    terminal = specs[0].terminal_id
    late = Ack(command_id=accepted["id"], terminal_id=terminal, stage=AckStage.RECEIVED, at=datetime.now(UTC))
    await publish_raw(live, [(live.topics.terminal_ack(terminal), encode(late))] * 2)

    async def rejected_as_late() -> bool:
        text = await metrics_text(live)
        return metric(text, "cunxiang_mqtt_messages_rejected_total", reason="ack_for_finished_broadcast") == 2

    await eventually(rejected_as_late)
    report = await live.report(accepted["id"])
    assert report["counts"]["completed"] == 1 and report["state"] == "finished"


async def test_qos1_duplicate_of_a_live_delivery_is_ignored_and_counted(live: LiveServer) -> None:
    specs = specs_in(["421202100005", "421202100236"])
    await live.register(specs)
    async with live.fleet(specs[:1]):
        accepted = await live.send(
            kind="notice", regions=["421202100005", "421202100236"], text="x", expires_in=60
        )
        await live.report_when(accepted["id"], lambda r: r["counts"]["completed"] == 1)
        done = Ack(
            command_id=accepted["id"],
            terminal_id=specs[0].terminal_id,
            stage=AckStage.COMPLETED,
            at=datetime.now(UTC),
        )
        await publish_raw(live, [(live.topics.terminal_ack(specs[0].terminal_id), encode(done))])

        async def ignored() -> bool:
            text = await metrics_text(live)
            return metric(text, "cunxiang_delivery_transitions_ignored_total", reason="duplicate") >= 1

        await eventually(ignored)
    report = await live.report(accepted["id"])
    assert report["counts"]["completed"] == 1 and report["counts"]["sent"] == 1


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown region", {"regions": ["421202199999"]}, "unknown region code(s): 421202199999"),
    ("malformed region", {"regions": ["42120"]}, "string should match pattern"),
    ("no target", {"regions": []}, "the target is empty"),
    ("expiry in the past", {"expires_in": None, "expires_at": "2020-01-01T00:00:00Z"}, "is in the past"),
    ("zero expires_in", {"expires_in": 0}, "expires_in must be a positive number"),
    ("both expiries", {"expires_at": "2099-01-01T00:00:00Z"}, "exactly one of expires_in"),
    ("missing content", {"text": None}, "content is missing"),
    ("emergency without level", {"level": None}, "needs a level"),
    ("level out of range", {"level": 5}, "level"),
    ("notice with a level", {"kind": "notice"}, "takes no level"),
    ("unknown kind", {"kind": "siren"}, "emergency"),
    ("unknown member", {"colour": "red"}, "extra inputs are not permitted"),
    ("expiry too far", {"expires_in": 400 * 24 * 3600}, "more than"),
    ("absurd expiry", {"expires_in": 10**15}, "more than"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_invalid_broadcast_request_gets_422_saying_what_is_wrong(
    live: LiveServer, case: str, change: dict[str, Any], message: str
) -> None:
    body: dict[str, Any] = {
        "kind": "emergency",
        "level": 2,
        "regions": ["421202"],
        "text": "t",
        "expires_in": 60,
    }
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    response = await live.http.post("/api/v1/broadcasts", json=body)
    assert response.status_code == 422, response.text
    assert message.lower() in response.text.lower()


async def test_unknown_broadcast_is_404(live: LiveServer) -> None:
    response = await live.http.get("/api/v1/broadcasts/nope")
    assert response.status_code == 404
    assert "no broadcast" in response.json()["detail"]


async def test_registering_a_terminal_in_an_unknown_region_is_refused(live: LiveServer) -> None:
    response = await live.http.post("/api/v1/terminals", json=[{"id": "t-1", "region": "421202199999"}])
    assert response.status_code == 422
    assert "421202199999" in response.json()["detail"]


async def test_expires_at_given_in_beijing_time_is_honoured(live: LiveServer) -> None:
    beijing = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Asia/Shanghai")) + timedelta(
        minutes=5
    )
    accepted = await live.send(kind="notice", regions=["421202"], text="t", expires_at=beijing.isoformat())
    assert datetime.fromisoformat(accepted["expires_at"]) == beijing.replace(microsecond=beijing.microsecond)


async def test_acks_with_absurd_times_or_an_unknown_stage_are_counted_and_change_nothing(
    live: LiveServer,
) -> None:
    specs = specs_in(["421202106001"])
    await live.register(specs)
    mine = specs[0].terminal_id
    accepted = await live.send(terminals=[mine], kind="notice", text="only one", expires_in=60)
    now = datetime.now(UTC)

    def ack(stage: AckStage, at: datetime) -> tuple[str, bytes]:
        message = Ack(command_id=accepted["id"], terminal_id=mine, stage=stage, at=at)
        return live.topics.terminal_ack(mine), encode(message)

    topic, playing = ack(AckStage.PLAYING, now)
    await publish_raw(
        live,
        [
            ack(AckStage.COMPLETED, now + timedelta(days=365 * 30)),
            ack(AckStage.COMPLETED, datetime(1970, 1, 1, tzinfo=UTC)),
            (topic, playing.replace(b'"playing"', b'"exploded"')),
        ],
    )

    async def counted() -> bool:
        text = await metrics_text(live)
        return (
            metric(text, "cunxiang_mqtt_messages_rejected_total", reason="absurd_timestamp") == 2
            and metric(text, "cunxiang_mqtt_messages_rejected_total", reason="unknown_stage") == 1
        )

    await eventually(counted)
    assert (await live.report(accepted["id"]))["counts"]["pending"] + (await live.report(accepted["id"]))[
        "counts"
    ]["sent"] == 1
    async with live.fleet(specs):
        report = await live.report_when(accepted["id"], lambda r: r["state"] == "finished")
    assert report["counts"]["completed"] == 1


async def test_ack_from_a_terminal_the_live_broadcast_did_not_target_or_going_backwards_is_counted(
    live: LiveServer,
) -> None:
    specs = specs_in(["421202106226", "421202106227"])
    await live.register(specs)
    mine, other = specs[0].terminal_id, specs[1].terminal_id
    accepted = await live.send(terminals=[mine], kind="notice", text="x", expires_in=60)
    now = datetime.now(UTC)

    def ack(terminal: str, stage: AckStage) -> tuple[str, bytes]:
        message = Ack(command_id=accepted["id"], terminal_id=terminal, stage=stage, at=now)
        return live.topics.terminal_ack(terminal), encode(message)

    await publish_raw(
        live, [ack(mine, AckStage.PLAYING), ack(mine, AckStage.RECEIVED), ack(other, AckStage.RECEIVED)]
    )

    async def counted() -> bool:
        text = await metrics_text(live)
        return (
            metric(text, "cunxiang_mqtt_messages_rejected_total", reason="terminal_not_targeted") == 1
            and metric(text, "cunxiang_delivery_transitions_ignored_total", reason="backwards") == 1
        )

    await eventually(counted)
    await live.report_when(accepted["id"], lambda r: r["counts"]["playing"] == 1)
