"""Telemetry history: heartbeats downsampled to samples through the batched writer, old samples
deleted, and a terminal's samples served by the API within the reader's region."""

from datetime import UTC, datetime, timedelta

import aiomqtt
from sqlmodel import Session, col, select

from controller.accounts import Role
from controller.db import init_schema, make_engine
from controller.models import TelemetrySample
from controller.settings import Settings
from controller.telemetry import TelemetrySampler, prune_telemetry
from controller.writer import DbWriter
from devices.messages import Heartbeat, Supply, encode
from tests.live import LiveServer, eventually

AT = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
EVERY = timedelta(seconds=300)


def beat(terminal: str, signal: int = -70, at: datetime = AT) -> Heartbeat:
    return Heartbeat(
        terminal_id=terminal, at=at, signal_dbm=signal, temperature_c=21.5, supply=Supply.MAINS, volume=80
    )


def stored(writer: DbWriter) -> list[TelemetrySample]:
    with Session(writer.engine) as session:
        query = select(TelemetrySample).order_by(col(TelemetrySample.terminal_id), col(TelemetrySample.at))
        return list(session.exec(query).all())


async def test_at_most_one_sample_per_terminal_per_interval_is_written_in_one_batch(writer: DbWriter) -> None:
    sampler = TelemetrySampler(writer, EVERY)
    for seconds in (0, 10, 299, 300, 301, 599, 600):
        sampler.on_heartbeat(beat("t-1", signal=-60 - seconds // 100), AT + timedelta(seconds=seconds))
    sampler.on_heartbeat(beat("t-2"), AT + timedelta(seconds=10))
    await writer.flush()

    rows = stored(writer)
    assert [(r.terminal_id, r.at - AT, r.signal_dbm) for r in rows] == [
        ("t-1", timedelta(0), -60),
        ("t-1", timedelta(seconds=300), -63),
        ("t-1", timedelta(seconds=600), -66),
        ("t-2", timedelta(seconds=10), -70),
    ]
    assert (rows[0].temperature_c, rows[0].supply, rows[0].volume) == (21.5, "mains", 80)
    assert [commit.rows for commit in writer.commits] == [{}]  # inserts only: one batch, no commit each


async def test_a_terminal_back_in_service_is_sampled_at_its_first_heartbeat(writer: DbWriter) -> None:
    sampler = TelemetrySampler(writer, EVERY)
    sampler.on_heartbeat(beat("t-1"), AT)
    sampler.forget("t-1")
    sampler.on_heartbeat(beat("t-1"), AT + timedelta(seconds=5))
    await writer.flush()
    assert len(stored(writer)) == 2


async def test_samples_older_than_the_days_kept_are_deleted(writer: DbWriter) -> None:
    sampler = TelemetrySampler(writer, EVERY)
    sampler.on_heartbeat(beat("t-1"), AT - timedelta(days=31))
    sampler.on_heartbeat(beat("t-2"), AT - timedelta(days=29))
    await writer.flush()
    deleted = await writer.call(lambda session: prune_telemetry(session, AT - timedelta(days=30)))
    assert deleted == 1
    assert [r.terminal_id for r in stored(writer)] == ["t-2"]


async def test_the_controller_deletes_old_samples_when_it_starts_sweeping(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    init_schema(engine)
    old = datetime.now(UTC) - timedelta(days=settings.telemetry_keep_days + 1)
    with Session(engine) as session:
        session.add(TelemetrySample(terminal_id="t-1", at=old, signal_dbm=-80))
        session.add(TelemetrySample(terminal_id="t-1", at=datetime.now(UTC), signal_dbm=-81))
        session.commit()

    def left() -> list[int | None]:
        with Session(engine) as session:
            return [row.signal_dbm for row in session.exec(select(TelemetrySample)).all()]

    async with LiveServer(settings):
        await eventually(lambda: left() == [-81])
    engine.dispose()


async def publish_heartbeats(live: LiveServer, beats: list[Heartbeat]) -> None:
    bus = live.controller.bus
    assert bus is not None
    async with aiomqtt.Client(bus.address.host, bus.address.port, identifier="test-telemetry") as client:
        for heartbeat in beats:
            topic = live.topics.terminal_heartbeat(heartbeat.terminal_id)
            await client.publish(topic, encode(heartbeat), qos=1)


async def test_heartbeats_over_mqtt_are_downsampled_and_served_within_the_readers_region(
    live: LiveServer,
) -> None:
    body = [{"id": "t-1", "region": "421202100001"}, {"id": "t-2", "region": "421202101001"}]
    assert (await live.http.post("/api/v1/terminals", json=body)).status_code == 200
    now = datetime.now(UTC)
    beats = [beat("t-1", signal=-60 - n, at=now) for n in range(5)] + [beat("t-2", signal=-90, at=now)]
    await publish_heartbeats(live, beats)

    def all_heard() -> bool:
        last = live.controller.presence.get("t-1")
        return last is not None and last.last_heartbeat is not None and last.last_heartbeat.signal_dbm == -64

    await eventually(all_heard)
    await live.controller.writer.flush()

    answer = await live.http.get("/api/v1/terminals/t-1/telemetry")
    assert answer.status_code == 200, answer.text
    [sample] = answer.json()
    assert (sample["signal_dbm"], sample["temperature_c"], sample["supply"]) == (-60, 21.5, "mains")
    later = {"since": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()}
    assert (await live.http.get("/api/v1/terminals/t-1/telemetry", params=later)).json() == []
    naive = {"since": "2026-11-27T05:00:00"}
    assert (await live.http.get("/api/v1/terminals/t-1/telemetry", params=naive)).status_code == 422

    xiangyang = await live.account("zhao", Role.VIEWER, "421202101")
    assert (await xiangyang.get("/api/v1/terminals/t-1/telemetry")).status_code == 403
    [theirs] = (await xiangyang.get("/api/v1/terminals/t-2/telemetry")).json()
    assert theirs["signal_dbm"] == -90
    assert (await live.http.get("/api/v1/terminals/nope/telemetry")).status_code == 404
