"""Programme schedules through the API and the scheduler: conflicts, the calendar, runs at their time,
missed runs across a restart, and an emergency pre-empting a scheduled programme on terminals."""

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, col, select

from controller.models import Broadcast, ScheduleRun
from controller.programmes import add_programme
from controller.schedules import ScheduleSpec, delete_schedule, save_schedule
from controller.service import Controller
from controller.settings import Settings
from controller.terminals import TerminalSpec
from devices.messages import now_utc
from tests.clock import FakeClock
from tests.conftest import make_settings
from tests.live import LiveServer, eventually, specs_in

SHANGHAI = ZoneInfo("Asia/Shanghai")
VILLAGE = "421202108001"


def local(moment: datetime) -> str:
    """A wall-clock time in the county, as schedules take it."""
    return moment.astimezone(SHANGHAI).replace(tzinfo=None, microsecond=0).isoformat()


async def programme(live: LiveServer, text: str = "今日农技：晚稻收割后及时翻耕晒田。") -> str:
    response = await live.http.post("/api/v1/programmes", json={"title": "农技", "text": text})
    assert response.status_code == 201, response.text
    programme_id: str = response.json()["id"]
    return programme_id


async def test_bad_schedules_are_refused_clearly_and_nothing_is_stored(live: LiveServer) -> None:
    programme_id = await programme(live)
    base: dict[str, Any] = {
        "name": "早间",
        "programme_id": programme_id,
        "regions": ["421202"],
        "start": "2026-12-01T06:30",
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"rrule": "FREQ=FORTNIGHTLY"}, "impossible recurrence"),
        ({"rrule": "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"}, "never occurs"),
        ({"until": "2026-11-01T00:00"}, "until is before start"),
        ({"timezone": "Asia/Xianning"}, "unknown time zone"),
        ({"programme_id": "nope"}, "no programme 'nope'"),
        ({"regions": ["421202199999"]}, "unknown region code(s): 421202199999"),
        ({"start": "2026-12-01T06:30+08:00"}, "without an offset"),
    ]
    for change, message in cases:
        response = await live.http.post("/api/v1/schedules", json=base | change)
        assert response.status_code == 422, (change, response.text)
        assert message in response.text, (change, response.text)
    assert (await live.http.get("/api/v1/schedules")).json() == []


async def test_a_second_schedule_on_the_same_terminals_at_the_same_time_is_saved_with_a_warning(
    live: LiveServer,
) -> None:
    await live.register(specs_in([VILLAGE]))
    programme_id = await programme(live)
    tomorrow = (now_utc() + timedelta(days=1)).astimezone(SHANGHAI).replace(hour=6, minute=30)
    base: dict[str, Any] = {"programme_id": programme_id, "start": local(tomorrow), "rrule": "FREQ=DAILY"}
    first = await live.http.post(
        "/api/v1/schedules", json=base | {"name": "镇早间", "regions": ["421202108"]}
    )
    assert first.status_code == 201 and first.json()["conflicts"] == []
    second = await live.http.post("/api/v1/schedules", json=base | {"name": "村早间", "regions": [VILLAGE]})
    assert second.status_code == 201
    [conflict] = second.json()["conflicts"]
    assert conflict["schedule_id"] == first.json()["id"] and conflict["terminals"] == 1
    assert conflict["overlaps"] >= 13
    elsewhere = await live.http.post(
        "/api/v1/schedules", json=base | {"name": "别处", "regions": ["421202100"]}
    )
    assert elsewhere.json()["conflicts"] == []


async def test_the_calendar_says_what_plays_where_and_when(live: LiveServer) -> None:
    programme_id = await programme(live)
    body: dict[str, Any] = {"programme_id": programme_id, "start": "2026-12-01T06:30", "rrule": "FREQ=DAILY"}
    await live.http.post("/api/v1/schedules", json=body | {"name": "马桥早间", "regions": ["421202104"]})
    await live.http.post(
        "/api/v1/schedules",
        json=body
        | {
            "name": "工作日午间",
            "regions": ["421202"],
            "start": "2026-12-01T12:00",
            "rrule": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR",
        },
    )
    week = {"from": "2026-12-07T00:00", "to": "2026-12-14T00:00"}
    everything = (await live.http.get("/api/v1/schedules/calendar", params=week)).json()["entries"]
    assert len(everything) == 7 + 5
    assert everything[0]["name"] == "马桥早间" and everything[0]["local"].startswith(
        "2026-12-07T06:30:00+08:00"
    )
    elsewhere = (
        await live.http.get("/api/v1/schedules/calendar", params=week | {"region": "421202100"})
    ).json()
    assert {e["name"] for e in elsewhere["entries"]} == {"工作日午间"}
    too_long = await live.http.get(
        "/api/v1/schedules/calendar", params={"from": "2026-01-01", "to": "2026-06-01"}
    )
    assert too_long.status_code == 422


async def test_an_emergency_preempts_a_scheduled_programme_which_then_resumes(live: LiveServer) -> None:
    specs = specs_in([VILLAGE])
    await live.register(specs)
    programme_id = await programme(live, "各位村民，下面播送今日天气。")
    async with live.fleet(specs, playback_s=2.0):
        soon = now_utc() + timedelta(seconds=2)
        response = await live.http.post(
            "/api/v1/schedules",
            json={
                "name": "天气",
                "programme_id": programme_id,
                "regions": [VILLAGE],
                "start": local(soon + timedelta(seconds=1)),
            },
        )
        assert response.status_code == 201, response.text
        schedule_id = response.json()["id"]

        async def played() -> bool:
            runs = (await live.http.get(f"/api/v1/schedules/{schedule_id}")).json()["runs"]
            return bool(runs) and runs[0]["outcome"] == "played"

        await eventually(played, timeout=15)
        [run] = (await live.http.get(f"/api/v1/schedules/{schedule_id}")).json()["runs"]
        broadcast_id = run["broadcast_id"]
        await live.report_when(broadcast_id, lambda r: r["counts"]["playing"] == 1)
        alert = await live.send(kind="emergency", level=3, regions=[VILLAGE], text="暴雨预警", expires_in=60)
        await live.report_when(broadcast_id, lambda r: r["counts"]["preempted"] == 1)
        await live.report_when(alert["id"], lambda r: r["state"] == "finished")
        report = await live.report_when(broadcast_id, lambda r: r["state"] == "finished", timeout=20)
    assert report["kind"] == "programme" and report["counts"]["completed"] == 1


# --- the scheduler on a clock the test moves ----------------------------------------------------------


@contextlib.asynccontextmanager
async def running(settings: Settings, clock: FakeClock) -> AsyncIterator[Controller]:
    """A controller on the test's clock, stopped however the test ends."""
    controller = Controller(settings, clock=clock)
    await controller.start()
    try:
        yield controller
    finally:
        await controller.stop()


async def add_schedule(controller: Controller, now: datetime, **spec: Any) -> str:
    def store(session: Session) -> str:
        programme = add_programme(session, "天气", text="今天多云转晴。")
        values: dict[str, Any] = {"name": "天气", "programme_id": programme.id, "regions": ["421202"]}
        schedule, _ = save_schedule(session, ScheduleSpec(**(values | spec)), "Asia/Shanghai", now)
        return schedule.id

    schedule_id = await controller.writer.call(store)
    controller.scheduler.reload()
    return schedule_id


async def runs(controller: Controller, schedule_id: str) -> list[ScheduleRun]:
    def read(session: Session) -> list[ScheduleRun]:
        query = (
            select(ScheduleRun)
            .where(ScheduleRun.schedule_id == schedule_id)
            .order_by(col(ScheduleRun.due_at))
        )
        return list(session.exec(query).all())

    return await controller.writer.call(read)


async def stage_one(controller: Controller, clock: FakeClock, due: datetime, **spec: Any) -> str:
    """A schedule for a village with a terminal, its run at `due` (two minutes ahead), and the
    clock moved into that run's staging window; returns once it is staged."""
    await controller.register([TerminalSpec(id="t-1", region=VILLAGE)])
    schedule_id = await add_schedule(controller, clock.now(), start=local(due), **spec)
    clock.advance(due - clock.now() - timedelta(seconds=20))
    await outcomes_become(controller, schedule_id, ["staged"])
    return schedule_id


async def outcomes_become(controller: Controller, schedule_id: str, wanted: list[str]) -> None:
    """Wait until the schedule's runs, oldest first, have these outcomes."""

    async def reached() -> bool:
        return [r.outcome for r in await runs(controller, schedule_id)] == wanted

    await eventually(reached, timeout=10)


async def broadcasts(controller: Controller) -> list[Broadcast]:
    await controller.writer.flush()
    return await controller.writer.call(lambda session: list(session.exec(select(Broadcast)).all()))


async def test_runs_happen_at_their_times_and_once(sqlite_url: str, embedded_broker: Any) -> None:
    settings = make_settings(sqlite_url, embedded_broker.url)
    clock = FakeClock(now_utc().replace(microsecond=0))
    async with running(settings, clock) as controller:
        first = clock.now() + timedelta(minutes=1)
        schedule_id = await add_schedule(controller, clock.now(), start=local(first), rrule="FREQ=HOURLY")
        await asyncio.sleep(0.2)
        assert await runs(controller, schedule_id) == []
        for hours in range(3):
            clock.advance(timedelta(minutes=1) if hours == 0 else timedelta(hours=1))

            async def ran(n: int = hours + 1) -> bool:
                return len([r for r in await runs(controller, schedule_id) if r.outcome == "played"]) == n

            await eventually(ran, timeout=10)
        done = await runs(controller, schedule_id)
        assert [r.due_at for r in done] == [first, first + timedelta(hours=1), first + timedelta(hours=2)]
        made = {b.id: b for b in await broadcasts(controller)}
        assert [made[r.broadcast_id].kind for r in done if r.broadcast_id] == ["programme"] * 3
        assert all(made[r.broadcast_id].state != "accepted" for r in done if r.broadcast_id)
        assert all(
            made[r.broadcast_id].expires_at == r.due_at + timedelta(seconds=1800)
            for r in done
            if r.broadcast_id
        )


@pytest.mark.parametrize(
    ("policy", "late", "played"), [("skip", 60, False), ("grace", 60, True), ("grace", 900, False)]
)
async def test_a_run_missed_while_stopped_follows_the_schedules_policy(
    sqlite_url: str, embedded_broker: Any, policy: str, late: int, played: bool
) -> None:
    settings = make_settings(sqlite_url, embedded_broker.url)
    clock = FakeClock(now_utc().replace(microsecond=0))
    async with running(settings, clock) as controller:
        due = clock.now() + timedelta(minutes=5)
        extra = {"missed": policy, "grace_s": 600} if policy == "grace" else {}
        schedule_id = await add_schedule(
            controller, clock.now(), start=local(due), rrule="FREQ=DAILY", **extra
        )
    later = FakeClock(due + timedelta(seconds=late))
    async with running(settings, later) as controller:

        async def handled() -> bool:
            return any(
                r.due_at == due and r.outcome in ("played", "skipped")
                for r in await runs(controller, schedule_id)
            )

        await eventually(handled, timeout=10)
        [run] = await runs(controller, schedule_id)
        assert run.outcome == ("played" if played else "skipped")
        assert (run.broadcast_id is not None) is played
        if played:
            assert run.detail == f"played {late} s late"
        else:
            assert "missed while no controller ran" in (run.detail or "")
        assert len(await broadcasts(controller)) == (1 if played else 0)


async def test_two_controllers_play_a_run_once(sqlite_url: str, embedded_broker: Any) -> None:
    clock = FakeClock(now_utc().replace(microsecond=0))
    async with (
        running(make_settings(sqlite_url, embedded_broker.url), clock) as one,
        running(make_settings(sqlite_url, embedded_broker.url), clock) as two,
    ):
        due = clock.now() + timedelta(minutes=1)
        schedule_id = await add_schedule(one, clock.now(), start=local(due))
        two.scheduler.reload()
        await asyncio.sleep(0.3)
        clock.advance(timedelta(minutes=1))

        await outcomes_become(one, schedule_id, ["played"])
        await asyncio.sleep(0.5)
        assert len(await broadcasts(one)) == 1


# --- programmes: speech and uploads --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_mandarin_text_becomes_speech_of_plausible_length_served_with_ranges(live: LiveServer) -> None:
    text = "汀泗河水位超过警戒线，请沿河群众立即向高处转移。"
    response = await live.http.post("/api/v1/programmes", json={"title": "转移通知", "text": text})
    body = response.json()
    assert response.status_code == 201 and body["media_format"] == "wav" and body["voice"] == "espeak-ng:cmn"
    # 24 characters of Mandarin: a few seconds of speech, not a click and not a minute.
    assert 3 < body["duration_s"] < 20
    media = await live.http.get(f"/media/{body['media']}")
    assert (
        media.status_code == 200 and media.content[:4] == b"RIFF" and len(media.content) == body["media_size"]
    )
    part = await live.http.get(f"/media/{body['media']}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == media.content[100:200]
    again = (await live.http.post("/api/v1/programmes", json={"title": "再来", "text": text})).json()
    assert again["media"] == body["media"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_a_text_only_alert_is_sent_with_speech(live: LiveServer) -> None:
    accepted = await live.send(
        kind="emergency", level=4, regions=["421202108"], text="大雾预警", expires_in=60
    )
    command = await live.controller.writer.call(lambda s: s.get(Broadcast, accepted["id"]).command)  # type: ignore[union-attr]
    assert '"audio":{"url":"http' in command and '"duration_s"' in command


async def test_uploads_are_checked_by_content_and_size(live: LiveServer, tmp_path: Any) -> None:
    import math
    import struct
    import wave

    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(16000)))
    audio = path.read_bytes()
    ok = await live.http.post(
        "/api/v1/programmes/upload",
        data={"title": "提示音"},
        files={"file": ("anything.bin", audio, "application/octet-stream")},
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["media_format"] == "wav" and ok.json()["duration_s"] == 2.0
    fake = await live.http.post(
        "/api/v1/programmes/upload",
        data={"title": "假的"},
        files={"file": ("song.mp3", b"%PDF-1.4 not audio", "audio/mpeg")},
    )
    assert fake.status_code == 422 and "judged by its content" in fake.text
    truncated = await live.http.post(
        "/api/v1/programmes/upload",
        data={"title": "半截"},
        files={"file": ("x.wav", audio[:30], "audio/wav")},
    )
    assert truncated.status_code == 422 and "cannot be read" in truncated.text
    live.controller.settings.max_upload_bytes = 10_000
    big = await live.http.post(
        "/api/v1/programmes/upload", data={"title": "太大"}, files={"file": ("x.wav", audio, "audio/wav")}
    )
    assert big.status_code == 413
    assert len((await live.http.get("/api/v1/programmes")).json()) == 1
    assert (await live.http.get("/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd")).status_code == 404
    assert live.controller.media.path("../" + ok.json()["media"]) is None
    assert live.controller.media.path(ok.json()["media"]) is not None


async def test_a_run_staged_before_a_restart_is_published_at_its_time_by_the_next_controller(
    sqlite_url: str, embedded_broker: Any
) -> None:
    settings = make_settings(sqlite_url, embedded_broker.url)
    clock = FakeClock(now_utc().replace(microsecond=0))
    async with running(settings, clock) as controller:
        due = clock.now() + timedelta(minutes=2)
        schedule_id = await stage_one(controller, clock, due)
        [broadcast] = await broadcasts(controller)
        assert broadcast.state == "accepted" and broadcast.not_before == due
    async with running(settings, clock) as controller:
        await asyncio.sleep(0.3)
        assert [b.state for b in await broadcasts(controller)] == ["accepted"]
        clock.advance(timedelta(seconds=20))

        await outcomes_become(controller, schedule_id, ["played"])
        live = controller.tracker.find(broadcast.id)
        assert live is not None and live.state.value == "active"


async def test_runs_due_while_the_scheduler_reloads_are_staged_not_lost(
    sqlite_url: str, embedded_broker: Any
) -> None:
    settings = make_settings(sqlite_url, embedded_broker.url)
    clock = FakeClock(now_utc().replace(microsecond=0))
    async with running(settings, clock) as controller:
        due = clock.now() + timedelta(minutes=2)
        ids = [await add_schedule(controller, clock.now(), start=local(due)) for _ in range(3)]
        await asyncio.sleep(0.2)
        # Time jumps past the staging window of all three while a reload is pending.
        clock.advance(timedelta(minutes=2, seconds=5))
        controller.scheduler.reload()

        async def all_played() -> bool:
            outcomes = [[r.outcome for r in await runs(controller, i)] for i in ids]
            return outcomes == [["played"]] * 3

        await eventually(all_played, timeout=10)


async def test_a_staged_run_of_a_schedule_deleted_before_its_time_is_withdrawn(
    sqlite_url: str, embedded_broker: Any
) -> None:
    settings = make_settings(sqlite_url, embedded_broker.url)
    clock = FakeClock(now_utc().replace(microsecond=0))
    async with running(settings, clock) as controller:
        schedule_id = await stage_one(controller, clock, clock.now() + timedelta(minutes=2))
        await controller.writer.call(lambda session: delete_schedule(session, schedule_id))
        controller.scheduler.reload()

        await outcomes_become(controller, schedule_id, ["skipped"])
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.3)
        [broadcast] = await broadcasts(controller)
        assert broadcast.state in ("cancelling", "cancelled")
        assert [r.detail for r in await runs(controller, schedule_id)] == [
            "the schedule was disabled or deleted before its time"
        ]


async def test_a_staged_run_whose_time_passed_while_stopped_follows_the_skip_policy(
    sqlite_url: str, embedded_broker: Any
) -> None:
    settings = make_settings(sqlite_url, embedded_broker.url)
    clock = FakeClock(now_utc().replace(microsecond=0))
    async with running(settings, clock) as controller:
        due = clock.now() + timedelta(minutes=2)
        schedule_id = await stage_one(controller, clock, due, rrule="FREQ=DAILY")
    later = FakeClock(due + timedelta(minutes=20))
    async with running(settings, later) as controller:
        await outcomes_become(controller, schedule_id, ["skipped"])
        [broadcast] = await broadcasts(controller)
        assert broadcast.state in ("cancelling", "cancelled")
