"""All of the controller's database writes, on one thread, in batches.

The MQTT hot path never waits for the database: trackers record row updates (and new rows, such as
presence history and alarms) here in memory, and `run` writes them every `interval` seconds
(sooner when `max_rows` are waiting) in one transaction of executemany INSERTs, then UPDATEs.
One writer thread also means SQLite never sees two of our writers at once.
Each UPDATE is compiled once per table and set of columns (`Updates`) and run with plain parameter
tuples, so a row costs the database driver's work and the columns' own conversions (such as UTC
times), not SQLAlchemy's per-row parameter handling (about three times faster with SQLite).
A write that fails for a passing reason (connection lost, database locked) keeps its rows for the
next attempt, merged under anything newer. Any other failure (a value out of range, a broken
constraint) is retried row by row, and the rows the database refuses are logged and dropped, so one
bad row cannot hold back every acknowledgement after it.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Dialect, Engine, Table, and_, bindparam, insert, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session

from controller.metrics import Metrics
from controller.models import UTCDateTime

log = logging.getLogger(__name__)
T = TypeVar("T")

Key = tuple[str, ...]
Pending = dict[Table, dict[Key, dict[str, Any]]]
Inserts = dict[Table, list[dict[str, Any]]]
Bulk = list[tuple[Table, dict[str, Any], dict[str, Any]]]
"""UPDATEs of every row matching some column values: (table, where, values)"""

COMMITS_REMEMBERED = 10_000


@dataclass(frozen=True)
class Commit:
    """One batch the database committed: when (epoch seconds, just after COMMIT returned), and per
    table name how many updates were recorded (several updates of one row merge into one row) and
    how many rows were written; and when the batch was taken, so that when any update recorded at
    time T was persisted can be told: by the first commit taken at or after T."""

    at: float
    updates: dict[str, int]
    rows: dict[str, int]
    started: float = 0.0
    """when the batch was taken (epoch seconds): it holds everything recorded before, nothing after"""


class DbWriter:
    """Serialises database work; batches keyed row updates."""

    def __init__(self, engine: Engine, metrics: Metrics, *, interval: float, max_rows: int) -> None:
        self.engine = engine
        self.metrics = metrics
        self._interval = interval
        self._max_rows = max_rows
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cunxiang-db")
        self._pending: Pending = {}
        self._inserts: Inserts = {}
        self._bulk: Bulk = []
        self._count = 0
        self._updates: dict[Table, int] = {}
        self.writing = 0
        """rows of the batch being written now (0 when none is)"""
        self._statements = Updates()
        self.commits: deque[Commit] = deque(maxlen=COMMITS_REMEMBERED)
        """The last batches committed, oldest first (for benchmarks and diagnosis)."""
        self._wake = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()

    async def call(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` with a session on the writer thread; it commits if it wants to."""

        def in_thread() -> T:
            with Session(self.engine, expire_on_commit=False) as session:
                return fn(session)

        return await asyncio.get_running_loop().run_in_executor(self._executor, in_thread)

    def update(self, table: Table, key: Key, values: dict[str, Any]) -> None:
        """Record that the row of `table` with primary key `key` gets `values` at the next flush."""
        rows = self._pending.setdefault(table, {})
        self._updates[table] = self._updates.get(table, 0) + 1
        row = rows.get(key)
        if row is None:
            rows[key] = dict(values)
            self._count += 1
            if self._count >= self._max_rows:
                self._wake.set()
        else:
            row.update(values)

    def update_where(
        self, table: Table, where: dict[str, Any], values: dict[str, Any], *, count: int
    ) -> None:
        """Record an UPDATE of every row of `table` whose columns equal `where`, written at the next
        flush after its new rows and before its row updates (`update`), so a row update recorded
        in the same batch, before or after it, is the row's last word. `count`: how many row
        updates it stands for (the commit log's figures). A region publish moves a county's
        deliveries from `pending` to `sent` with one of these instead of thousands of rows."""
        self._bulk.append((table, dict(where), dict(values)))
        self._updates[table] = self._updates.get(table, 0) + count
        self._count += 1
        if self._count >= self._max_rows:
            self._wake.set()

    def insert(self, table: Table, row: dict[str, Any]) -> None:
        """Record a new row of `table`, written at the next flush before that flush's updates."""
        self._inserts.setdefault(table, []).append(row)
        self._count += 1
        if self._count >= self._max_rows:
            self._wake.set()

    @property
    def backlog(self) -> int:
        return self._count

    async def flush(self) -> None:
        """Write everything recorded so far; on a passing failure the rows wait for the next flush."""
        async with self._lock:
            if not self._pending and not self._inserts and not self._bulk:
                return
            started = time.time()
            batch, inserts, bulk = self._pending, self._inserts, self._bulk
            count, updates = self._count, self._updates
            self._pending, self._inserts, self._bulk, self._count, self._updates = {}, {}, [], 0, {}
            self.writing = count
            try:
                # Shielded: a cancelled caller must not abandon a batch the thread is still writing.
                committed_at = await asyncio.shield(
                    asyncio.get_running_loop().run_in_executor(
                        self._executor, self._write, batch, inserts, bulk
                    )
                )
            except BaseException:
                self.metrics.db_flush_errors.inc()
                self._restore(batch, inserts, bulk, updates)
                raise
            finally:
                self.writing = 0
            self.metrics.db_flushes.inc()
            self.metrics.db_flush_rows.observe(count)
            self.commits.append(
                Commit(
                    at=committed_at,
                    updates={table.name: n for table, n in updates.items()},
                    rows={table.name: len(rows) for table, rows in batch.items()},
                    started=started,
                )
            )

    async def run(self) -> None:
        """Flush every `interval` (sooner when the batch is full) until `stop`; survive outages."""
        while not self._stopping:
            if not self._wake.is_set():
                # (When it is set already, the next batch starts now: wait_for's task would cost
                # the event loop's turns, each of which may hold a read of acknowledgements.)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("database write of %d rows failed; will retry", self._count)
                await asyncio.sleep(min(5.0, self._interval * 20))

    async def stop(self) -> None:
        """Let `run` finish its current flush and end, then flush what is left."""
        self._stopping = True
        self._wake.set()
        await self.flush()

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def _restore(self, batch: Pending, inserts: Inserts, bulk: Bulk, updates: dict[Table, int]) -> None:
        self._bulk = bulk + self._bulk
        for table, new_rows in inserts.items():
            self._inserts[table] = new_rows + self._inserts.get(table, [])
        for table, n in updates.items():
            self._updates[table] = self._updates.get(table, 0) + n
        for table, rows in batch.items():
            current = self._pending.setdefault(table, {})
            for key, values in rows.items():
                newer = current.get(key)
                current[key] = values if newer is None else {**values, **newer}
        self._count = sum(len(rows) for rows in self._pending.values())
        self._count += sum(len(rows) for rows in self._inserts.values()) + len(self._bulk)

    def _write(self, batch: Pending, inserts: Inserts, bulk: Bulk) -> float:
        """Write a batch in one transaction; returns when it was committed (epoch seconds)."""
        try:
            with self.engine.begin() as connection:
                for table, new_rows in inserts.items():
                    connection.execute(insert(table), new_rows)
                for table, where, values in bulk:
                    self._statements.update_where(connection, table, where, values)
                for table, rows in batch.items():
                    self._statements.update_rows(connection, table, rows)
        except Exception as exc:
            if _passing(exc):
                raise
            self._write_row_by_row(batch, inserts, bulk)
        return time.time()

    def _write_row_by_row(self, batch: Pending, inserts: Inserts, bulk: Bulk) -> None:
        for table, new_rows in inserts.items():
            for row in new_rows:
                try:
                    with self.engine.begin() as connection:
                        connection.execute(insert(table), [row])
                except Exception as exc:
                    if _passing(exc):
                        raise
                    self.metrics.db_rows_refused.inc()
                    log.error("database refused new %s row %s; dropped: %s", table.name, row, exc)
        for table, where, values in bulk:
            try:
                with self.engine.begin() as connection:
                    self._statements.update_where(connection, table, where, values)
            except Exception as exc:
                if _passing(exc):
                    raise
                self.metrics.db_rows_refused.inc()
                log.error("database refused %s rows %s %s; dropped: %s", table.name, where, values, exc)
        for table, rows in batch.items():
            for key, values in rows.items():
                try:
                    with self.engine.begin() as connection:
                        self._statements.update_rows(connection, table, {key: values})
                except Exception as exc:
                    if _passing(exc):
                        raise
                    self.metrics.db_rows_refused.inc()
                    log.error("database refused %s row %s %s; dropped: %s", table.name, key, values, exc)


def _passing(exc: Exception) -> bool:
    """Whether a failed write may succeed if tried again unchanged (connection, lock, timeout)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


Processor = Callable[[Any], Any] | None


def _sqlite_utc(value: datetime | None) -> str | None:
    """A `UTCDateTime` as SQLite stores it: what the column type's own conversion and then the
    sqlite3 driver's datetime adapter (`isoformat(" ")` of the naive UTC time) give, in one step."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.isoformat(" ")[:-6]  # without its "+00:00"


def _processor(column_type: Any, dialect: Dialect) -> Processor:
    """The column type's conversion of a parameter (a shortcut for UTC times on SQLite, where the
    general one costs a measurable share of writing an acknowledgement)."""
    if isinstance(column_type, UTCDateTime) and dialect.name == "sqlite":
        return _sqlite_utc
    processor: Processor = column_type.bind_processor(dialect)
    return processor


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    """bind parameter names, in the order of a positional driver's parameters"""
    sources: tuple[tuple[bool, Any, Processor], ...]
    """per parameter: from the key (and its index in it) or from the values (and the column), and
    the column type's conversion"""
    positional: bool


class Updates:
    """UPDATE statements by primary key, compiled once per table, set of columns and dialect."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[Table, tuple[str, ...], tuple[str, ...], str], _Compiled] = {}

    def update_rows(self, connection: Connection, table: Table, rows: dict[Key, dict[str, Any]]) -> None:
        """UPDATE rows by primary key, one executemany per set of columns."""
        by_shape: dict[tuple[str, ...], list[tuple[Key, dict[str, Any]]]] = {}
        for key, values in rows.items():
            by_shape.setdefault(tuple(sorted(values)), []).append((key, values))
        pk = [column.name for column in table.primary_key.columns]
        for shape, entries in by_shape.items():
            compiled = self._compile(connection, table, pk, shape)
            times: dict[datetime, str | None] = {}
            params: Sequence[Any] = [_parameters(compiled, key, values, times) for key, values in entries]
            connection.exec_driver_sql(compiled.sql, params)

    def update_where(
        self, connection: Connection, table: Table, where: dict[str, Any], values: dict[str, Any]
    ) -> None:
        """UPDATE every row whose columns equal `where` (names in both are distinct parameters)."""
        columns = tuple(where)
        compiled = self._compile(connection, table, list(columns), tuple(values))
        times: dict[datetime, str | None] = {}
        key = tuple(where[name] for name in columns)
        connection.exec_driver_sql(compiled.sql, [_parameters(compiled, key, values, times)])

    def _compile(
        self, connection: Connection, table: Table, pk: list[str], shape: tuple[str, ...]
    ) -> _Compiled:
        dialect = connection.dialect
        cache_key = (table, tuple(pk), shape, dialect.name)
        compiled = self._compiled.get(cache_key)
        if compiled is None:
            statement = (
                update(table)
                .where(and_(*(table.c[name] == bindparam(f"k_{name}") for name in pk)))
                .values({name: bindparam(f"v_{name}") for name in shape})
            )
            sql = statement.compile(dialect=dialect)
            positional = sql.positiontup is not None
            names = tuple(sql.positiontup) if sql.positiontup is not None else tuple(sql.binds)
            sources = tuple(
                (
                    name.startswith("k_"),
                    pk.index(name[2:]) if name.startswith("k_") else name[2:],
                    _processor(sql.binds[name].type, dialect),
                )
                for name in names
            )
            compiled = _Compiled(sql.string, names, sources, positional)
            self._compiled[cache_key] = compiled
        return compiled


_INSERTS: dict[tuple[Table, tuple[str, ...], str], _Compiled] = {}


def insert_rows(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT rows that all have the same columns, as one executemany of plain parameters (each
    column type's own conversion applied, as for `Updates`): a broadcast's delivery rows, stored
    on the way to its publish, where SQLAlchemy's per-row handling cost about two thirds of the
    time. Columns left out get NULL or their server default, not a Python-side default."""
    if not rows:
        return
    shape = tuple(rows[0])
    dialect = connection.dialect
    compiled = _INSERTS.get((table, shape, dialect.name))
    if compiled is None:
        sql = insert(table).values({name: bindparam(f"v_{name}") for name in shape}).compile(dialect=dialect)
        names = tuple(sql.positiontup) if sql.positiontup is not None else tuple(sql.binds)
        sources = tuple((False, name[2:], _processor(sql.binds[name].type, dialect)) for name in names)
        compiled = _Compiled(sql.string, names, sources, sql.positiontup is not None)
        _INSERTS[(table, shape, dialect.name)] = compiled
    times: dict[datetime, str | None] = {}
    params: Sequence[Any] = [_parameters(compiled, (), row, times) for row in rows]
    connection.exec_driver_sql(compiled.sql, params)


def _parameters(
    compiled: _Compiled, key: Key, values: dict[str, Any], times: dict[datetime, str | None]
) -> Any:
    """One row's driver parameters: a tuple for a positional driver (SQLite), else a dict. UTC times
    on SQLite are converted once per batch (`times`): a row's `updated_at` is the time of its state,
    and a region publish gives thousands of rows the same time."""
    converted = []
    for from_key, field, processor in compiled.sources:
        value = key[field] if from_key else values[field]
        if processor is None:
            converted.append(value)
        elif processor is _sqlite_utc and value is not None:
            text = times.get(value)
            if text is None:
                text = times[value] = _sqlite_utc(value)
            converted.append(text)
        else:
            converted.append(processor(value))
    if compiled.positional:
        return tuple(converted)
    return dict(zip(compiled.names, converted, strict=True))
