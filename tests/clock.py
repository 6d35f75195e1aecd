"""A clock the test moves by hand, for the scheduler."""

import asyncio
from datetime import datetime, timedelta


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self._now = now
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        while self._now < when and not wake.is_set():
            moved, woken = asyncio.ensure_future(self._moved.wait()), asyncio.ensure_future(wake.wait())
            await asyncio.wait({moved, woken}, return_when=asyncio.FIRST_COMPLETED)
            moved.cancel()
            woken.cancel()

    def advance(self, by: timedelta) -> None:
        self._now += by
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
