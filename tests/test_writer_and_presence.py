"""The batched writer and the presence tracker, against a real database."""

import random
import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.dialects import sqlite
from sqlmodel import Session, select

from controller.db import init_schema, make_engine
from controller.metrics import Metrics
from controller.models import Terminal, UTCDateTime
from controller.presence import STALE_SESSION, PresenceTracker
from controller.writer import DbWriter, _sqlite_utc
from devices.backoff import BACKOFF_MAX_S, reconnect_delay
from devices.messages import Presence, TerminalStatus

AT = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


def stored(writer: DbWriter, terminal_id: str) -> Terminal:
    with Session(writer.engine) as session:
        terminal = session.get(Terminal, terminal_id)
        assert terminal is not None
        return terminal


async def test_a_row_the_database_refuses_is_dropped_and_the_rest_are_written(writer: DbWriter) -> None:
    table = Terminal.__table__  # type: ignore[attr-defined]
    writer.update(table, ("t-1",), {"session": 2**70})
    writer.update(table, ("t-2",), {"presence": "online"})
    await writer.flush()
    assert stored(writer, "t-2").presence == "online"
    assert stored(writer, "t-1").session is None
    assert writer.backlog == 0
    assert writer.metrics.registry.get_sample_value("cunxiang_db_rows_refused_total") == 1


async def test_later_updates_to_a_row_merge_into_one_write(writer: DbWriter) -> None:
    table = Terminal.__table__  # type: ignore[attr-defined]
    writer.update(table, ("t-1",), {"presence": "online", "session": 5})
    writer.update(table, ("t-1",), {"presence": "lost"})
    assert writer.backlog == 1
    await writer.flush()
    assert (stored(writer, "t-1").presence, stored(writer, "t-1").session) == ("lost", 5)


def status(state: Presence, session: int) -> TerminalStatus:
    return TerminalStatus(terminal_id="t-1", state=state, session=session, region="421202100001", at=AT)


async def test_a_late_will_of_an_older_session_is_ignored(writer: DbWriter) -> None:
    presence = PresenceTracker(writer, Metrics())
    presence.register("t-1")
    assert presence.on_status(status(Presence.ONLINE, 200), AT).new_birth
    assert presence.on_status(status(Presence.LOST, 100), AT).rejection == STALE_SESSION
    assert presence.get("t-1").presence == "online"  # type: ignore[union-attr]


async def test_a_birth_is_believed_even_when_the_terminal_clock_went_backwards(writer: DbWriter) -> None:
    presence = PresenceTracker(writer, Metrics())
    presence.register("t-1")
    presence.on_status(status(Presence.ONLINE, 200), AT)
    presence.on_status(status(Presence.LOST, 200), AT)
    outcome = presence.on_status(status(Presence.ONLINE, 50), AT)
    assert outcome.rejection is None and outcome.new_birth
    assert presence.get("t-1").presence == "online"  # type: ignore[union-attr]


async def test_a_repeated_retained_birth_is_not_a_new_birth(writer: DbWriter) -> None:
    presence = PresenceTracker(writer, Metrics())
    presence.register("t-1")
    assert presence.on_status(status(Presence.ONLINE, 200), AT).new_birth
    assert not presence.on_status(status(Presence.ONLINE, 200), AT).new_birth


async def test_status_heard_before_registration_counts_once_registered(writer: DbWriter) -> None:
    presence = PresenceTracker(writer, Metrics())
    assert presence.on_status(status(Presence.ONLINE, 200), AT).rejection == "unknown_terminal"
    presence.register("t-1")
    assert presence.get("t-1").presence == "online"  # type: ignore[union-attr]


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 10, 100])
def test_reconnect_delay_doubles_with_jitter_up_to_a_cap(attempt: int) -> None:
    delay = reconnect_delay(attempt, random.Random(attempt))
    base = min(BACKOFF_MAX_S, 2.0 ** (attempt - 1))
    assert base * 0.5 <= delay <= base


def test_schema_gains_columns_added_since_the_database_was_created(database_url: str) -> None:
    engine = make_engine(database_url)
    init_schema(engine)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE broadcast DROP COLUMN cancel_command"))
        connection.execute(text("ALTER TABLE delivery DROP COLUMN by_command"))
    init_schema(engine)
    columns = {
        table: {c["name"] for c in inspect(engine).get_columns(table)} for table in ("broadcast", "delivery")
    }
    engine.dispose()
    assert "cancel_command" in columns["broadcast"] and "by_command" in columns["delivery"]


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 27, 5, 0, 1, 123456, tzinfo=UTC),
        datetime(2026, 11, 27, 5, 0, 1, tzinfo=UTC),  # no microseconds: isoformat leaves them out
        datetime(2026, 11, 27, 13, 0, 1, 5, tzinfo=timezone(timedelta(hours=8))),
    ],
)
def test_the_writers_utc_shortcut_stores_what_the_column_type_and_driver_did(value: datetime) -> None:
    dialect = sqlite.dialect()
    general = UTCDateTime().bind_processor(dialect)
    converted = general(value) if general is not None else value
    with sqlite3.connect(":memory:") as db:  # the driver's own datetime adapter
        stored = db.execute("SELECT ?", (converted,)).fetchone()[0]
    assert _sqlite_utc(value) == stored
    with pytest.raises(ValueError):
        _sqlite_utc(value.replace(tzinfo=None))


async def test_an_update_of_every_matching_row_runs_before_the_row_updates_of_its_batch(
    writer: DbWriter,
) -> None:
    table = Terminal.__table__  # type: ignore[attr-defined]
    with Session(writer.engine) as session:
        session.add(Terminal(id="t-3", region_code="421202100001"))
        session.commit()
    writer.update(table, ("t-1",), {"name": "row update recorded first"})
    writer.update_where(table, {"region_code": "421202100001"}, {"name": "every row"}, count=3)
    writer.update(table, ("t-2",), {"name": "row update recorded after"})
    await writer.flush()
    with Session(writer.engine) as session:
        names = {t.id: t.name for t in session.exec(select(Terminal)).all()}
    assert names == {
        "t-1": "row update recorded first",
        "t-2": "row update recorded after",
        "t-3": "every row",
    }
    assert writer.commits[-1].updates == {"terminal": 5}
