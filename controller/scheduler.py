"""Playing schedules: each run becomes a broadcast at its time, exactly once.

The scheduler keeps the next run of every enabled schedule in a heap. `lookahead` (30 s) before a
run is due it stages it: claims the run by inserting its `ScheduleRun` row (schedule, due time;
the primary key makes a second claim fail, so a run is played once even with several controllers
or a restart in the middle), and stores its broadcast with every delivery, `not_before` its time.
At its time it only has to publish, which takes milliseconds even when a thousand villages have
their programmes at 06:30. Nothing else publishes a staged broadcast: the scheduler owns it.

On start-up:
- runs this controller's predecessor staged are armed again if their time has not come; if it has
  passed, they follow the schedule's missed-run policy like any missed run; a staged run of a
  schedule since disabled or deleted is withdrawn (its broadcast cancelled, never sent);
- a claim left without a broadcast (a controller that stopped between the two) is forgotten, so
  the run counts as missed or is staged again;
- runs missed while no controller was running follow each schedule's policy: `skip` records the
  latest missed run as skipped; `grace` plays it, late, if it is no more than `grace_s` old (and
  records it skipped otherwise). Older missed runs are not played: a county does not want
  yesterday's weather forecast at 09:00.

A database error costs one attempt, never the scheduler: it is logged and tried again. Time comes
from a `Clock`, so tests can drive it.
"""

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

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


Claim = Callable[[Session, str], None]
"""Record, in the transaction that stores the broadcast (its id given), that this run is staged."""
Play = Callable[[Schedule, Programme, datetime, Claim], Awaitable[Broadcast]]
"""Store one run of a schedule as a broadcast, staged until its time, claiming the run in the same
transaction (the controller's submit)."""
Release = Callable[[str], Awaitable[None]]
"""Publish a staged broadcast (the controller's release)."""
Withdraw = Callable[[str], Awaitable[object]]
"""Cancel a staged broadcast that must not go out (the controller's cancel)."""
LOOKAHEAD = timedelta(seconds=30)
# A claim this old without a broadcast belongs to a controller that stopped half-way.
ORPHAN_CLAIM_AGE = timedelta(seconds=60)
RETRY_AFTER_S = 5.0


class Scheduler:
    def __init__(
        self,
        writer: DbWriter,
        play: Play,
        release: Release,
        withdraw: Withdraw,
        clock: Clock | None = None,
        lookahead: timedelta = LOOKAHEAD,
    ) -> None:
        self._writer = writer
        self._play = play
        self._release = release
        self._withdraw = withdraw
        self._lookahead = lookahead
        self.clock: Clock = clock or SystemClock()
        self._changed = asyncio.Event()
        self._never = asyncio.Event()
        self._heap: list[tuple[datetime, str]] = []
        self._schedules: dict[str, Schedule] = {}
        self._armed: dict[tuple[str, datetime], tuple[asyncio.Task[None], str]] = {}
        self._through: datetime | None = None
        """every run due at or before this was staged (or claimed by someone else)"""
        self.played: list[tuple[str, datetime, datetime]] = []
        """(schedule, due, when it was published), the last few thousand, for benchmarks"""

    def reload(self) -> None:
        """Schedules were added, changed or deleted: read them again before the next run."""
        self._changed.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._serve()
                except Exception:
                    log.exception("scheduler failed; trying again in %.0f s", RETRY_AFTER_S)
                    await asyncio.sleep(RETRY_AFTER_S)
        finally:
            for task, _broadcast in self._armed.values():
                task.cancel()

    async def _serve(self) -> None:
        if self._through is None:
            now = self.clock.now()
            self._schedules = {s.id: s for s in await self._writer.call(enabled_schedules)}
            await self._recover(now)
            await self._catch_up(now)
            self._through = now
        while True:
            self._changed.clear()
            await self._load()
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

    async def _load(self) -> None:
        """The heap again from the schedules in the database, from the last run staged on (runs due
        meanwhile are staged at once, late, rather than lost); armed runs of schedules no longer
        enabled are withdrawn."""
        assert self._through is not None
        self._schedules = {s.id: s for s in await self._writer.call(enabled_schedules)}
        after = self._through - timedelta(microseconds=1)
        schedules = list(self._schedules.values())
        nexts = await asyncio.to_thread(lambda: [(next_run(s, after), s.id) for s in schedules])
        self._heap = [(due, schedule_id) for due, schedule_id in nexts if due is not None]
        heapq.heapify(self._heap)
        for schedule_id, due in [key for key in self._armed if key[0] not in self._schedules]:
            await self._withdraw_run(schedule_id, due, "the schedule was disabled or deleted before its time")

    async def _run_once(self, schedule_id: str, due: datetime) -> None:
        schedule = self._schedules.get(schedule_id)
        if schedule is None:
            return
        following = next_run(schedule, due)
        if following is not None:
            heapq.heappush(self._heap, (following, schedule_id))
        self._through = max(self._through or due, due)
        try:
            await self._stage(schedule, due)
        except Exception:
            # The claim may not have been made; the run is tried again after a reload or restart.
            log.exception("schedule %s: staging the run due at %s failed", schedule.id, due.isoformat())

    async def _stage(self, schedule: Schedule, due: datetime, late: bool = False) -> None:
        """Claim the run and stage its broadcast; a timer publishes it at its time."""
        started = self.clock.now()
        detail = f"played {(started - due).total_seconds():.0f} s late" if late else None

        def claim(session: Session, broadcast_id: str) -> None:
            # The primary key refuses a second claim (another controller) before anything is stored.
            run = ScheduleRun(schedule_id=schedule.id, due_at=due, started_at=started, outcome="staged")
            run.broadcast_id, run.detail = broadcast_id, detail
            session.add(run)
            session.flush()

        try:
            programme = await self._writer.call(lambda session: session.get(Programme, schedule.programme_id))
            if programme is None:
                raise LookupError(f"programme {schedule.programme_id} no longer exists")
            broadcast = await self._play(schedule, programme, due, claim)
        except IntegrityError:
            return
        except Exception as exc:
            log.exception("schedule %s: the run due at %s failed", schedule.id, due.isoformat())
            await self._writer.call(
                partial(
                    _record, schedule_id=schedule.id, due=due, at=started, outcome="failed", detail=str(exc)
                )
            )
            return
        self._arm(schedule.id, due, broadcast.id, detail)

    def _arm(self, schedule_id: str, due: datetime, broadcast_id: str, detail: str | None = None) -> None:
        if (schedule_id, due) in self._armed:
            return

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
        self._armed[(schedule_id, due)] = (task, broadcast_id)

        def done(finished: asyncio.Task[None]) -> None:
            self._armed.pop((schedule_id, due), None)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("publishing a scheduled run failed", exc_info=finished.exception())

        task.add_done_callback(done)

    async def _withdraw_run(self, schedule_id: str, due: datetime, why: str) -> None:
        armed = self._armed.pop((schedule_id, due), None)
        if armed is None:
            return
        task, broadcast_id = armed
        task.cancel()
        await self._withdraw(broadcast_id)
        await self._writer.call(
            partial(_finish, schedule_id=schedule_id, due=due, outcome="skipped", detail=why)
        )

    async def _recover(self, now: datetime) -> None:
        """Staged runs and half-made claims left by a controller that stopped."""
        for run in await self._writer.call(partial(_unfinished_runs, orphans_before=now - ORPHAN_CLAIM_AGE)):
            schedule = self._schedules.get(run.schedule_id)
            broadcast_id = run.broadcast_id
            assert broadcast_id is not None
            self._arm(run.schedule_id, run.due_at, broadcast_id, run.detail)
            if schedule is None:
                await self._withdraw_run(run.schedule_id, run.due_at, "the schedule was disabled or deleted")
            elif run.due_at < now - timedelta(seconds=1) and not _worth_playing(schedule, run.due_at, now):
                await self._withdraw_run(
                    run.schedule_id, run.due_at, f"missed while no controller ran; policy {schedule.missed}"
                )

    async def _catch_up(self, now: datetime) -> None:
        """Apply each schedule's missed-run policy to the runs missed while no controller ran."""
        latest = await self._writer.call(last_runs)
        for schedule in self._schedules.values():
            since = latest.get(schedule.id, schedule.created_at)
            missed = occurrences(schedule, since, now)
            if not missed:
                continue
            last = missed[-1]
            if _worth_playing(schedule, last, now):
                log.info("schedule %s: playing the run due at %s late", schedule.id, last.isoformat())
                await self._stage(schedule, last, late=True)
            else:
                detail = f"{len(missed)} run(s) missed while no controller ran; policy {schedule.missed}"
                await self._writer.call(
                    partial(
                        _record, schedule_id=schedule.id, due=last, at=now, outcome="skipped", detail=detail
                    )
                )


def _worth_playing(schedule: Schedule, due: datetime, now: datetime) -> bool:
    return schedule.missed == "grace" and now - due <= timedelta(seconds=schedule.grace_s)


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
        run.outcome, run.detail = outcome, (detail or "")[:500] or None
        run.broadcast_id = broadcast_id or run.broadcast_id
        session.add(run)
        session.commit()


def _unfinished_runs(session: Session, orphans_before: datetime) -> list[ScheduleRun]:
    """Forget claims a stopped controller left without a broadcast; return the staged runs."""
    session.execute(
        delete(ScheduleRun).where(
            col(ScheduleRun.outcome) == "claimed",
            col(ScheduleRun.broadcast_id).is_(None),
            col(ScheduleRun.started_at) < orphans_before,
        )
    )
    session.commit()
    query = select(ScheduleRun).where(
        ScheduleRun.outcome == "staged", col(ScheduleRun.broadcast_id).is_not(None)
    )
    return list(session.exec(query).all())


def _record(
    session: Session, *, schedule_id: str, due: datetime, at: datetime, outcome: str, detail: str
) -> None:
    """Record a run that was not staged (skipped, failed), unless another controller has it."""
    if _claim(session, schedule_id, due, at) is not None:
        _finish(session, schedule_id=schedule_id, due=due, outcome=outcome, detail=detail)
