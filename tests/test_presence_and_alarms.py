"""Presence from status, will and heartbeats; flapping; fault alarms; with a real broker where it matters."""

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
from sqlmodel import Session, select

from controller.accounts import Role
from controller.alarms import AlarmTracker, Fault, Thresholds, faults_in
from controller.metrics import Metrics
from controller.models import Alarm, PresenceEvent
from controller.presence import PresenceTracker, Why
from controller.writer import DbWriter
from devices.messages import (
    Amplifier,
    Heartbeat,
    Presence,
    Speaker,
    Supply,
    TerminalStatus,
    decode_heartbeat,
    encode,
)
from tests.live import LiveServer, eventually
from tests.processes import clean_env, cunxiang, follow, wait_for

AT = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


def birth(terminal: str = "t-1", session: int = 1, interval: int = 30) -> TerminalStatus:
    return TerminalStatus(
        terminal_id=terminal,
        state=Presence.ONLINE,
        session=session,
        region="421202100001",
        heartbeat_interval_s=interval,
        at=AT,
    )


def beat(terminal: str = "t-1", at: datetime = AT, **telemetry: Any) -> Heartbeat:
    return Heartbeat(terminal_id=terminal, at=at, **telemetry)


def events(writer: DbWriter) -> list[tuple[str, str]]:
    with Session(writer.engine) as session:
        rows = session.exec(select(PresenceEvent).order_by(PresenceEvent.id)).all()  # type: ignore[arg-type]
        return [(row.presence, row.reason) for row in rows]


def tracker(writer: DbWriter) -> PresenceTracker:
    presence = PresenceTracker(writer, Metrics(), misses=3, flap_changes=4, flap_window=timedelta(minutes=10))
    presence.register("t-1")
    return presence


# --- presence, by hand -----------------------------------------------------------------------------


async def test_a_terminal_silent_for_three_heartbeat_intervals_goes_offline(writer: DbWriter) -> None:
    presence = tracker(writer)
    presence.on_status(birth(interval=10), AT)
    presence.check(AT + timedelta(seconds=30))
    assert presence.get("t-1").presence == "online"  # type: ignore[union-attr]
    presence.check(AT + timedelta(seconds=31))
    assert presence.get("t-1").presence == "offline"  # type: ignore[union-attr]
    presence.on_heartbeat(beat(at=AT + timedelta(seconds=40)), AT + timedelta(seconds=40))
    assert presence.get("t-1").presence == "online"  # type: ignore[union-attr]
    await writer.flush()
    assert events(writer) == [
        ("online", Why.BIRTH),
        ("offline", Why.HEARTBEAT_TIMEOUT),
        ("online", Why.HEARTBEAT),
    ]


async def test_silence_while_the_controller_was_away_does_not_count(writer: DbWriter) -> None:
    presence = tracker(writer)
    presence.on_status(birth(interval=10), AT)
    presence.heard_from_now_on(AT + timedelta(minutes=5))
    presence.check(AT + timedelta(minutes=5, seconds=29))
    assert presence.get("t-1").presence == "online"  # type: ignore[union-attr]


async def test_a_flapping_terminal_is_one_event_then_stable_not_a_storm(writer: DbWriter) -> None:
    presence = tracker(writer)
    at = AT
    for session in range(1, 11):
        presence.on_status(birth(session=session), at)
        lost = birth(session=session).model_copy(update={"state": Presence.LOST})
        presence.on_status(lost, at + timedelta(seconds=5))
        at += timedelta(seconds=20)
    entry = presence.get("t-1")
    assert entry is not None and entry.flapping
    presence.check(at + timedelta(minutes=11))
    assert not entry.flapping
    await writer.flush()
    assert events(writer) == [
        ("online", Why.BIRTH),
        ("lost", Why.WILL),
        ("online", Why.BIRTH),
        ("lost", Why.FLAPPING),
        ("lost", Why.STABLE),
    ]


async def test_heartbeats_of_an_unregistered_terminal_are_listed_not_adopted(writer: DbWriter) -> None:
    presence = tracker(writer)
    assert presence.on_heartbeat(beat("stranger-9"), AT) == "unknown_terminal"
    assert presence.on_heartbeat(beat("stranger-9"), AT + timedelta(seconds=30)) == "unknown_terminal"
    [stranger] = presence.strangers()
    assert (stranger.terminal_id, stranger.messages, stranger.region) == ("stranger-9", 2, None)
    assert presence.get("stranger-9") is None


# --- heartbeats and faults ---------------------------------------------------------------------------


def test_out_of_range_telemetry_is_dropped_per_member_and_the_rest_kept() -> None:
    payload = encode(beat(firmware="1.2.0")).replace(
        b"}", b',"volume":300,"temperature_c":-500,"signal_dbm":-70}'
    )
    heartbeat, dropped = decode_heartbeat(payload)
    assert sorted(dropped) == ["temperature_c", "volume"]
    assert heartbeat.signal_dbm == -70 and heartbeat.firmware == "1.2.0" and heartbeat.volume is None


def test_a_heartbeat_without_a_valid_terminal_or_time_is_refused() -> None:
    payload = encode(beat()).replace(b'"t-1"', b'"BAD ID"')
    try:
        decode_heartbeat(payload)
    except Exception as exc:
        assert type(exc).__name__ == "PayloadError"
    else:
        raise AssertionError("decoded")


def test_faults_come_from_what_the_heartbeat_measures_only() -> None:
    limits = Thresholds(low_signal_dbm=-105, high_temperature_c=70)
    found = dict(
        faults_in(
            beat(speaker=Speaker.OPEN_CIRCUIT, amplifier=Amplifier.OK, supply=Supply.BATTERY, battery_pct=40),
            limits,
        )
    )
    assert found == {
        Fault.SPEAKER: "speaker open_circuit",
        Fault.AMPLIFIER: None,
        Fault.ON_BATTERY: "mains power lost, on battery at 40%",
    }
    hot_and_weak = dict(faults_in(beat(signal_dbm=-110, temperature_c=75.2), limits))
    assert hot_and_weak == {Fault.LOW_SIGNAL: "signal -110 dBm", Fault.HIGH_TEMPERATURE: "75 °C"}


async def test_an_alarm_is_raised_once_cleared_when_the_fault_clears_and_kept(writer: DbWriter) -> None:
    alarms = AlarmTracker(writer, Metrics(), Thresholds())
    alarms.on_heartbeat(beat(speaker=Speaker.OPEN_CIRCUIT), AT)
    alarms.on_heartbeat(beat(speaker=Speaker.OPEN_CIRCUIT), AT + timedelta(seconds=30))
    alarms.on_heartbeat(beat(), AT + timedelta(seconds=60))
    assert alarms.active("t-1") == {Fault.SPEAKER}
    alarms.on_heartbeat(beat(speaker=Speaker.OK), AT + timedelta(seconds=90))
    assert alarms.active("t-1") == set()
    await writer.flush()
    with Session(writer.engine) as session:
        [alarm] = session.exec(select(Alarm)).all()
    assert (alarm.kind, alarm.started_at, alarm.ended_at) == ("speaker_fault", AT, AT + timedelta(seconds=90))


# --- with the real broker ------------------------------------------------------------------------------


async def publish(live: LiveServer, messages: list[tuple[str, bytes, bool]]) -> None:
    bus = live.controller.bus
    assert bus is not None
    async with aiomqtt.Client(bus.address.host, bus.address.port, identifier="test-device") as client:
        for topic, payload, retain in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


async def test_speaker_fault_raises_and_clears_an_alarm_seen_in_the_api(live: LiveServer) -> None:
    await live.http.post("/api/v1/terminals", json=[{"id": "t-1", "region": "421202100001"}])
    topic = live.topics.terminal_heartbeat("t-1")
    await publish(live, [(topic, encode(beat(at=datetime.now(UTC), speaker=Speaker.OPEN_CIRCUIT)), False)])

    async def raised() -> bool:
        return bool((await live.http.get("/api/v1/alarms", params={"active": True})).json())

    await eventually(raised)
    [alarm] = (await live.http.get("/api/v1/alarms", params={"active": True, "region": "421202"})).json()
    assert alarm["kind"] == "speaker_fault" and alarm["terminal_id"] == "t-1"
    on_duty = await live.account("wang", Role.OPERATOR, "421202100")
    acked = await on_duty.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", json={"note": "已派人检修"})
    assert acked.status_code == 200 and acked.json()["acknowledged_by"] == "wang"
    assert acked.json()["ended_at"] is None

    await publish(live, [(topic, encode(beat(at=datetime.now(UTC), speaker=Speaker.OK)), False)])

    async def cleared() -> bool:
        return not (await live.http.get("/api/v1/alarms", params={"active": True})).json()

    await eventually(cleared)
    detail = (await live.http.get("/api/v1/terminals/t-1")).json()
    assert detail["alarms"][0]["ended_at"] is not None and detail["alarms"][0]["acknowledged_by"] == "wang"
    assert (await live.http.post("/api/v1/alarms/nope/acknowledge", json={"note": "x"})).status_code == 404


async def test_a_terminal_that_stops_heartbeating_becomes_offline(live: LiveServer) -> None:
    await live.http.post("/api/v1/terminals", json=[{"id": "t-1", "region": "421202100001"}])
    status = birth(interval=2).model_copy(update={"at": datetime.now(UTC)})
    await publish(live, [(live.topics.terminal_status("t-1"), encode(status), True)])

    async def presence_is(value: str) -> bool:
        return bool((await live.http.get("/api/v1/terminals/t-1")).json()["presence"] == value)

    await eventually(lambda: presence_is("online"))
    await eventually(lambda: presence_is("offline"), timeout=20)
    await live.controller.writer.flush()
    history = (await live.http.get("/api/v1/terminals/t-1")).json()["presence_history"]
    assert [(h["presence"], h["reason"]) for h in history][:2] == [
        ("offline", "heartbeat_timeout"),
        ("online", "birth"),
    ]


async def test_a_terminal_whose_connection_dies_is_lost_by_its_will(live: LiveServer, tmp_path: Path) -> None:
    village = "421202100244"
    bus = live.controller.bus
    assert bus is not None
    env = clean_env(
        mqtt_url=f"mqtt://{bus.address.host}:{bus.address.port}",
        topic_prefix=live.settings.topic_prefix,
    )
    simulate = cunxiang(
        "simulate",
        "--region",
        village,
        "--per-village",
        "1",
        "--register",
        f"http://127.0.0.1:{live.port}",
        "--api-key",
        await live.api_key("simulator", Role.ADMIN),
        "--keys",
        str(live.controller.keys.keyset_path),
        env=env,
        cwd=str(tmp_path),
    )
    try:
        await _wait_line(simulate, "simulated terminals online")
        terminal = f"sim-{village}-1"

        async def presence_is(value: str) -> bool:
            return bool((await live.http.get(f"/api/v1/terminals/{terminal}")).json()["presence"] == value)

        await eventually(lambda: presence_is("online"))
        simulate.send_signal(signal.SIGKILL)
        simulate.wait(10)
        await eventually(lambda: presence_is("lost"), timeout=15)
        await live.controller.writer.flush()
        history = (await live.http.get(f"/api/v1/terminals/{terminal}")).json()["presence_history"]
        assert (history[0]["presence"], history[0]["reason"]) == ("lost", "will")
    finally:
        if simulate.poll() is None:
            simulate.kill()
            simulate.wait(10)


async def _wait_line(process: Any, text: str) -> None:
    await asyncio.to_thread(wait_for, follow(process), process, text, 60)


async def test_the_retained_birth_of_a_terminal_gone_quiet_does_not_bring_it_back(writer: DbWriter) -> None:
    presence = tracker(writer)
    presence.on_status(birth(interval=10), AT)
    presence.check(AT + timedelta(seconds=31))
    assert presence.on_status(birth(interval=10), AT + timedelta(minutes=5)).new_birth is False
    assert presence.get("t-1").presence == "offline"  # type: ignore[union-attr]
    assert presence.on_status(birth(session=2, interval=10), AT + timedelta(minutes=6)).new_birth is True
    assert presence.get("t-1").presence == "online"  # type: ignore[union-attr]
