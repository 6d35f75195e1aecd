"""The CAP feed poller: what is new in a source is received once, oldest first, with every
failure on record, through a real server, database and broker."""

import asyncio
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from controller.cap.rules import CapFeed
from controller.models import Broadcast, CapMessage
from tests.cap_builders import cap_xml
from tests.conftest import make_settings
from tests.live import LiveServer, specs_in
from tests.test_cap_intake import VILLAGES, cap_time, flood, reference

# Polled once at start-up, then by the tests: the next poll of the loop is a day away.
A_DAY = 86_400


def poller_settings(database_url: str, broker_url: str, source: str, **overrides: Any) -> Any:
    feeds = [{"name": "drop", "source": source}]
    return make_settings(database_url, broker_url, cap_feeds=feeds, cap_feed_interval_s=A_DAY, **overrides)


async def messages(live: LiveServer) -> list[CapMessage]:
    def read(session: Session) -> list[CapMessage]:
        return list(session.exec(select(CapMessage).order_by(CapMessage.id)).all())  # type: ignore[arg-type]

    return await live.controller.writer.call(read)


async def broadcasts(live: LiveServer) -> list[Broadcast]:
    def read(session: Session) -> list[Broadcast]:
        return list(session.exec(select(Broadcast).order_by(Broadcast.issued_at)).all())  # type: ignore[arg-type]

    return await live.controller.writer.call(read)


def feed(live: LiveServer) -> CapFeed:
    (only,) = live.settings.cap_feeds
    return only


async def test_a_directory_is_received_oldest_first_and_once(
    database_url: str, embedded_broker: Any, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = poller_settings(database_url, embedded_broker.url, str(drop))
    async with LiveServer(settings) as live:
        await live.register(specs_in(VILLAGES))
        alert = flood("XN-2026-P01")
        update = flood(
            "XN-2026-P02",
            msg_type="Update",
            references=(reference(alert),),
            severity="Severe",
            sent=cap_time(0.01),
        )
        # Named so that name order puts the update first: it must still be received second.
        (drop / "a-update.xml").write_bytes(update)
        (drop / "b-alert.xml").write_bytes(alert)
        (drop / "c-broken.xml").write_bytes(b"<alert>not CAP")
        receipts = await live.controller.cap_poller.poll(feed(live))
        assert [(r.identifier, r.outcome) for r in receipts] == [
            (None, "rejected"),
            ("XN-2026-P01", "broadcast"),
            ("XN-2026-P02", "update"),
        ]
        first, second = await broadcasts(live)
        assert second.supersedes == first.id and first.superseded_by == second.id
        assert first.created_by == "feed:drop"

        assert await live.controller.cap_poller.poll(feed(live)) == []
        stored = await messages(live)
        assert len(stored) == 3
        assert {m.origin for m in stored} == {
            str(drop / n) for n in ("a-update.xml", "b-alert.xml", "c-broken.xml")
        }
        broken = next(m for m in stored if m.outcome == "rejected")
        assert broken.reason is not None and broken.reason.startswith("not well-formed XML")

        cancel = cap_xml(
            identifier="XN-2026-P03", sent=cap_time(), msg_type="Cancel", references=reference(update)
        )
        (drop / "d-cancel.xml").write_bytes(cancel)
        (receipt,) = await live.controller.cap_poller.poll(feed(live))
        assert receipt.outcome == "cancel" and receipt.broadcasts == [second.id]


async def test_a_feed_that_cannot_be_read_is_recorded_once_per_reason(
    database_url: str, embedded_broker: Any, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "alerts.xml"
    settings = poller_settings(database_url, embedded_broker.url, str(missing))
    async with LiveServer(settings) as live:
        await live.controller.cap_poller.poll(feed(live))
        await live.controller.cap_poller.poll(feed(live))
        (record,) = await messages(live)
        assert record.outcome == "rejected" and record.origin == str(missing)
        assert record.reason is not None and record.size == 0 and record.raw is None
        listed = (await live.http.get("/api/v1/cap/messages")).json()
        assert listed[0]["received_by"] == "feed:drop" and listed[0]["kept"] is False


async def test_two_controllers_polling_one_source_act_on_each_message_once(
    database_url: str, embedded_broker: Any, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = poller_settings(database_url, embedded_broker.url, str(drop))
    other = settings.model_copy(update={"controller_id": settings.controller_id + "-b"})
    async with LiveServer(settings) as one, LiveServer(other) as two:
        await one.register(specs_in(VILLAGES))
        for n in range(5):
            (drop / f"alert-{n}.xml").write_bytes(flood(f"XN-2026-T{n}"))
        first, second = await asyncio.gather(
            one.controller.cap_poller.poll(feed(one)), two.controller.cap_poller.poll(feed(two))
        )
        made = [r for r in first + second if not r.duplicate]
        assert sorted(r.identifier or "" for r in made) == [f"XN-2026-T{n}" for n in range(5)]
        assert len(await broadcasts(one)) == 5
        assert len(await messages(one)) == 5
