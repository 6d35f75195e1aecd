"""Playing schedules: each run becomes a broadcast at its time, exactly once.

The scheduler keeps the next run of every enabled schedule in a heap. `lookahead` (30 s) before a
run is due it stages it: claims the run by inserting its `ScheduleRun` row (schedule, due time;
the primary key makes a second claim fail, so a run is played once even with several controllers
or a restart in the middle), and stores its broadcast with every delivery, `not_before` its time.
At its time it only has to publish, which takes milliseconds even when a thousand villages have
their programmes at 06:30. A staged run whose controller stopped is published by the next one.

On start-up, runs missed while no controller was running are handled by each schedule's policy:
`skip` records the latest missed run as skipped; `grace` plays it, late, if it is no more than
`grace_s` old (and records it skipped otherwise). Older missed runs are not played: a county
does not want yesterday's weather forecast at 09:00.

Time comes from a `Clock`, so tests can drive it.
"""

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controller.models import Broadcast, Programme, Schedule, ScheduleRun
from controller.schedules import enabled_schedules, last_runs, next_run, occurrences
from controller.writer import DbWriter
from devices.messages import now_utc

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        """Return at `when`, or as soon as `wake` is set."""


class SystemClock:
    def now(self) -> datetime:
        return now_utc()

    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        delay = (when - now_utc()).total_seconds()
        if delay > 0:
            try:
                await asyncio.wait_for(wake.wait(), delay)
            except TimeoutError:
                return


Play = Callable[[Schedule, Programme, datetime], Awaitable[Broadcast]]
"""Store one run of a schedule as a broadcast, staged until its time (the controller's submit)."""
Release = Callable[[str], Awaitable[None]]
"""Publish a staged broadcast (the controller's release)."""
LOOKAHEAD = timedelta(seconds=30)


class Scheduler:
    def __init__(
        self,
        writer: DbWriter,
        play: Play,
        release: Release,
        clock: Clock | None = None,
        lookahead: timedelta = LOOKAHEAD,
    ) -> None:
        self._writer = writer
        self._play = play
        self._release = release
        self._lookahead = lookahead
        self._releases: set[asyncio.Task[None]] = set()
        self._never = asyncio.Event()
        self.clock: Clock = clock or SystemClock()
        self._changed = asyncio.Event()
        self._heap: list[tuple[datetime, str]] = []
        self._schedules: dict[str, Schedule] = {}
        self.played: list[tuple[str, datetime, datetime]] = []
        """(schedule, due, when its broadcast was accepted), the last few thousand, for benchmarks"""

    def reload(self) -> None:
        """Schedules were added, changed or deleted: read them again before the next run."""
        self._changed.set()

    async def run(self) -> None:
        try:
            for schedule_id, due, broadcast_id in await self._writer.call(_staged_runs):
                self._arm(schedule_id, due, broadcast_id)
            await self._catch_up()
            while True:
                self._changed.clear()
                await self._load(self.clock.now())
                while not self._changed.is_set():
                    if not self._heap:
                        await self._changed.wait()
                        break
                    await self.clock.sleep_until(self._heap[0][0] - self._lookahead, self._changed)
                    while not self._changed.is_set() and self._heap:
                        due, schedule_id = self._heap[0]
                        if due - self._lookahead > self.clock.now():
                            break
                        heapq.heappop(self._heap)
                        await self._run_once(schedule_id, due)
        finally:
            for task in self._releases:
                task.cancel()

    async def _load(self, now: datetime) -> None:
        schedules = await self._writer.call(enabled_schedules)
        self._schedules = {s.id: s for s in schedules}
        self._heap = []
        for schedule in schedules:
            due = next_run(schedule, now - timedelta(microseconds=1))
            if due is not None:
                self._heap.append((due, schedule.id))
        heapq.heapify(self._heap)

    async def _run_once(self, schedule_id: str, due: datetime) -> None:
        schedule = self._schedules.get(schedule_id)
        if schedule is None:
            return
        following = next_run(schedule, due)
        if following is not None:
            heapq.heappush(self._heap, (following, schedule_id))
        await self._fire(schedule, due)

    async def _fire(self, schedule: Schedule, due: datetime, late: bool = False) -> None:
        """Claim the run and stage its broadcast; a timer publishes it at its time."""
        started = self.clock.now()
        claimed = await self._writer.call(lambda session: _claim(session, schedule.id, due, started))
        if claimed is None:
            return
        try:
            programme = await self._writer.call(lambda session: session.get(Programme, schedule.programme_id))
            if programme is None:
                raise LookupError(f"programme {schedule.programme_id} no longer exists")
            broadcast = await self._play(schedule, programme, due)
        except Exception as exc:
            log.exception("schedule %s: the run due at %s failed", schedule.id, due.isoformat())
            await self._writer.call(
                partial(_finish, schedule_id=schedule.id, due=due, outcome="failed", detail=str(exc))
            )
            return
        detail = f"played {(started - due).total_seconds():.0f} s late" if late else None
        await self._writer.call(
            partial(
                _finish,
                schedule_id=schedule.id,
                due=due,
                broadcast_id=broadcast.id,
                outcome="staged",
                detail=detail,
            )
        )
        self._arm(schedule.id, due, broadcast.id, detail)

    def _arm(self, schedule_id: str, due: datetime, broadcast_id: str, detail: str | None = None) -> None:
        async def at_its_time() -> None:
            await self.clock.sleep_until(due, self._never)
            await self._release(broadcast_id)
            self.played.append((schedule_id, due, self.clock.now()))
            del self.played[:-10_000]
            await self._writer.call(
                partial(
                    _finish,
                    schedule_id=schedule_id,
                    due=due,
                    broadcast_id=broadcast_id,
                    outcome="played",
                    detail=detail,
                )
            )

        task = asyncio.create_task(at_its_time())
        self._releases.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releases.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("publishing a scheduled run failed", exc_info=task.exception())

    async def _catch_up(self) -> None:
        """Apply each schedule's missed-run policy to the runs missed while no controller ran."""
        now = self.clock.now()
        schedules = await self._writer.call(enabled_schedules)
        latest = await self._writer.call(last_runs)
        for schedule in schedules:
            since = latest.get(schedule.id, schedule.created_at)
            missed = occurrences(schedule, since, now)
            if not missed:
                continue
            last = missed[-1]
            if schedule.missed == "grace" and now - last <= timedelta(seconds=schedule.grace_s):
                log.info("schedule %s: playing the run due at %s late", schedule.id, last.isoformat())
                await self._fire(schedule, last, late=True)
            else:
                detail = f"{len(missed)} run(s) missed while no controller ran; policy {schedule.missed}"
                await self._writer.call(
                    partial(_skip, schedule_id=schedule.id, due=last, at=now, detail=detail)
                )


def _claim(session: Session, schedule_id: str, due: datetime, at: datetime) -> ScheduleRun | None:
    run = ScheduleRun(schedule_id=schedule_id, due_at=due, started_at=at, outcome="claimed")
    session.add(run)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return None
    return run


def _finish(
    session: Session,
    *,
    schedule_id: str,
    due: datetime,
    outcome: str,
    detail: str | None,
    broadcast_id: str | None = None,
) -> None:
    run = session.get(ScheduleRun, (schedule_id, due))
    if run is not None:
        run.broadcast_id, run.outcome, run.detail = broadcast_id, outcome, (detail or "")[:500] or None
        session.add(run)
        session.commit()


def _staged_runs(session: Session) -> list[tuple[str, datetime, str]]:
    """Runs staged by a controller that stopped before their time: (schedule, due, broadcast)."""
    query = select(ScheduleRun).where(
        ScheduleRun.outcome == "staged", col(ScheduleRun.broadcast_id).is_not(None)
    )
    return [
        (run.schedule_id, run.due_at, run.broadcast_id) for run in session.exec(query) if run.broadcast_id
    ]


def _skip(session: Session, *, schedule_id: str, due: datetime, at: datetime, detail: str) -> None:
    if _claim(session, schedule_id, due, at) is not None:
        _finish(session, schedule_id=schedule_id, due=due, outcome="skipped", detail=detail)
