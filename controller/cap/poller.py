"""The CAP feed poller: every `CUNXIANG_CAP_FEED_INTERVAL_S`, each configured source is read
(`feeds.read_source`) and what is new in it is received like a posted message, as `feed:<name>`.

- New means bytes not received before, whatever became of them: a feed lists the same entries
  poll after poll, and a message refused once is not refused again every minute.
- New messages are received oldest first (by their `sent`; a feed's entries sent in the same
  second, in the reverse of the feed's order, since feeds list the newest first), so an Update
  listed above its Alert finds the Alert already received.
- An entry that cannot be had (a download failing) is recorded as refused once per reason, not at
  every poll; a source that fails as a whole is logged.
- Every controller process polls: the unique sender+identifier of stored messages makes the second
  process to receive a message find it stored, so it is acted on once.
"""

import asyncio
import hashlib
import logging
import os
from datetime import UTC, datetime

from controller.accounts import Principal, Role
from controller.cap.feeds import FeedItem, read_source
from controller.cap.fetch import OriginHeaders, is_http, new_client
from controller.cap.intake import CapIntake, CapReceipt
from controller.cap.mapping import CapRejection, read_cap
from controller.cap.rules import CapFeed
from controller.settings import Settings

log = logging.getLogger(__name__)

_EARLIEST = datetime.min.replace(tzinfo=UTC)


def feed_principal(feed: CapFeed, county_region: str) -> Principal:
    """Who a feed's messages come from: an operator over its region, never an approver, so a live
    level I/II alert from it waits for a person's approval like any other."""
    return Principal(
        name=f"feed:{feed.name}",
        role=Role.OPERATOR,
        region=feed.region or county_region,
        kind="api_key",
        id=f"feed:{feed.name}",
        source="cap-feed",
    )


class CapPoller:
    """Reads the configured CAP sources on an interval and hands what is new to the intake."""

    def __init__(self, intake: CapIntake, settings: Settings) -> None:
        self.intake = intake
        self.settings = settings
        self._failures: dict[tuple[str, str], str] = {}
        """(feed, origin) → the reason last recorded, so an entry failing the same way is recorded once"""

    async def run(self) -> None:
        while True:
            for feed in self.settings.cap_feeds:
                await self.poll(feed)
            await asyncio.sleep(self.settings.cap_feed_interval_s)

    async def poll(self, feed: CapFeed) -> list[CapReceipt]:
        """Read one source once; the receipts of what was new in it. Never raises but for cancellation."""
        by = feed_principal(feed, self.settings.county_region)
        try:
            # The client's timeout bounds each step; this bounds a slow trickle of them.
            async with asyncio.timeout(max(self.settings.cap_feed_interval_s, 30.0)):
                async with new_client(self.settings.cap_fetch_timeout_s, _credentials(feed)) as client:
                    items = await read_source(
                        feed.source,
                        client=client,
                        max_bytes=self.settings.cap_max_bytes,
                        max_entries=self.settings.cap_feed_max_entries,
                    )
        except TimeoutError:
            log.warning("CAP feed %s: reading %s took too long; trying again later", feed.name, feed.source)
            return []
        try:
            return await self._receive(feed, by, items)
        except Exception:
            # One bad poll must not end polling (a database outage, the controller stopping).
            log.exception("CAP feed %s: receiving from %s failed; trying again later", feed.name, feed.source)
            return []

    async def _receive(self, feed: CapFeed, by: Principal, items: list[FeedItem]) -> list[CapReceipt]:
        receipts: list[CapReceipt] = []
        for item in items:
            if item.error is None:
                continue
            if item.origin == feed.source:
                log.warning("CAP feed %s: %s", feed.name, item.error)
            if self._failures.get((feed.name, item.origin)) != item.error:
                self._failures[(feed.name, item.origin)] = item.error
                receipts.append(await self.intake.refuse(by, item.origin, item.error))
        fetched = [(item.origin, item.data) for item in items if item.data is not None]
        seen = await self.intake.seen([hashlib.sha256(data).hexdigest() for _, data in fetched])
        new = [(origin, data) for origin, data in fetched if hashlib.sha256(data).hexdigest() not in seen]
        if not await asyncio.to_thread(os.path.isdir, feed.source):
            new.reverse()  # feeds list the newest first: messages sent in one second keep their order
        for origin, data in sorted(new, key=lambda each: _sent(each[1], self.settings.cap_max_bytes)):
            self._failures.pop((feed.name, origin), None)
            receipts.append(await self.intake.receive(data, by, origin=origin, again=False))
        if receipts:
            log.info("CAP feed %s: %d new message(s)", feed.name, len(receipts))
        return receipts


def _credentials(feed: CapFeed) -> OriginHeaders | None:
    if not feed.headers or not is_http(feed.source):
        return None
    headers = {name: value.get_secret_value() for name, value in feed.headers.items()}
    return OriginHeaders(feed.source, headers)


def _sent(data: bytes, max_bytes: int) -> datetime:
    """When a message says it was sent; one that cannot be read sorts first (it is only refused)."""
    alert = read_cap(data, max_bytes)
    return _EARLIEST if isinstance(alert, CapRejection) else alert.sent
