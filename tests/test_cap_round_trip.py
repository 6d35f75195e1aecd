"""Our CAP out is CAP another system can take in: a second Cunxiang reads the first one's Atom feed
with its poller and ends up with the same broadcasts, updated and cancelled as the first ones are."""

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from controller.accounts import Role
from controller.cap.parse import parse_cap
from controller.models import Broadcast
from devices.messages import Command, decode
from tests.conftest import make_settings
from tests.live import LiveServer, eventually, specs_in

VILLAGES = ["421202104001", "421202104215"]
TOWNSHIP = "421202104"
A_DAY = 86_400


async def stored(live: LiveServer) -> list[Broadcast]:
    def read(session: Session) -> list[Broadcast]:
        return list(session.exec(select(Broadcast).order_by(Broadcast.issued_at)).all())  # type: ignore[arg-type]

    return await live.controller.writer.call(read)


def same_broadcast(ours: dict[str, Any], theirs: Broadcast) -> None:
    """What a broadcast says, compared field by field (CAP times are whole seconds)."""
    assert (theirs.kind, theirs.level, theirs.status, theirs.event) == (
        ours["kind"],
        ours["level"],
        ours["status"],
        ours["event"],
    )
    assert theirs.regions == ours["regions"] and sorted(theirs.terminal_ids or []) == sorted(
        ours["terminal_ids"] or []
    )
    assert theirs.text == ours["text"]
    expires = ours["expires_at"]
    assert timedelta(0) <= expires - theirs.expires_at < timedelta(seconds=1)


async def test_a_second_system_polling_our_feed_gets_the_same_broadcasts(
    live: LiveServer, embedded_broker: Any, tmp_path: Path
) -> None:
    specs = specs_in(VILLAGES)
    await live.register(specs)
    key = await live.api_key("downstream", Role.VIEWER)
    feed = {
        "name": "upstream",
        "source": f"{live.http.base_url}/api/v1/cap/feed",
        "headers": {"X-API-Key": key},
    }
    database = f"sqlite:///{tmp_path / 'downstream.db'}"
    # The other county's system has its terminals before it is told to read our feed.
    async with LiveServer(make_settings(database, embedded_broker.url)) as other:
        await other.register(specs)
    downstream = make_settings(database, embedded_broker.url, cap_feeds=[feed], cap_feed_interval_s=A_DAY)
    flood = {"kind": "emergency", "level": 3, "event": "洪水", "expires_in": 3600}
    sent = [
        await live.send(regions=VILLAGES, text="陆水河水位上涨，沿河群众注意防范。", **flood),
        await live.send(
            kind="notice",
            regions=[TOWNSHIP],
            text="明早六点停水。",
            event="停水",
            expires_in=3600,
            status="exercise",
        ),
        await live.send(terminals=[specs[0].terminal_id], text="一号喇叭附近注意山洪。", **flood),
    ]

    async with LiveServer(downstream) as other:
        poller = other.controller.cap_poller
        (source,) = downstream.cap_feeds

        # Read at start-up.
        async def three() -> bool:
            return len(await stored(other)) == 3

        await eventually(three)
        ours = {b.id: b for b in await stored(live)}
        # In the order we sent them, though all three were sent within a second.
        theirs = await stored(other)
        for accepted, copy in zip(sent, theirs, strict=True):
            same_broadcast(ours[accepted["id"]].model_dump(), copy)
        assert all(b.created_by == "feed:upstream" for b in theirs)
        # The audio came along: fetched from us, checked, and served to their terminals by them.
        for accepted, copy in zip(sent, theirs, strict=True):
            original = decode(Command, ours[accepted["id"]].command).content.audio
            taken = decode(Command, copy.command).content.audio
            assert original is not None and taken is not None and taken.sha256 == original.sha256
            assert taken.url.startswith(str(other.http.base_url))

        # The same feed again: nothing new.
        assert await poller.poll(source) == []

        update = await live.http.post(
            f"/api/v1/broadcasts/{sent[0]['id']}/update",
            json={**flood, "level": 2, "regions": VILLAGES, "text": "陆水河超警戒水位，立即转移。"},
        )
        assert update.status_code == 201, update.text
        (updated,) = await poller.poll(source)
        assert updated.outcome == "update"
        theirs = await stored(other)
        copy = theirs[-1]
        same_broadcast((await stored(live))[-1].model_dump(), copy)
        assert copy.supersedes == theirs[0].id

        cancel = await live.http.post(f"/api/v1/broadcasts/{update.json()['id']}/cancel")
        assert cancel.status_code == 202, cancel.text
        (cancelled,) = await poller.poll(source)
        assert cancelled.outcome == "cancel" and cancelled.broadcasts == [copy.id]
        report = await other.report_when(copy.id, lambda r: r["state"] in ("cancelling", "cancelled"))
        assert report["state"] in ("cancelling", "cancelled")

        # Every message it took in is one our CAP schema check accepts, kept byte for byte.
        for record in (await other.http.get("/api/v1/cap/messages")).json():
            raw = await other.http.get(f"/api/v1/cap/messages/{record['id']}/raw")
            parse_cap(raw.content, 1 << 20)
