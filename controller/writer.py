"""All of the controller's database writes, on one thread, in batches.

The MQTT hot path never waits for the database: trackers record row updates here in memory, and
`run` writes them every `interval` seconds (sooner when `max_rows` are waiting) in one transaction
of executemany UPDATEs. One writer thread also means SQLite never sees two of our writers at once.
A write that fails for a passing reason (connection lost, database locked) keeps its rows for the
next attempt, merged under anything newer. Any other failure (a value out of range, a broken
constraint) is retried row by row, and the rows the database refuses are logged and dropped, so one
bad row cannot hold back every acknowledgement after it.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, and_, bindparam, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session

from controller.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

Key = tuple[str, ...]
Pending = dict[Table, dict[Key, dict[str, Any]]]


class DbWriter:
    """Serialises database work; batches keyed row updates."""

    def __init__(self, engine: Engine, metrics: Metrics, *, interval: float, max_rows: int) -> None:
        self.engine = engine
        self.metrics = metrics
        self._interval = interval
        self._max_rows = max_rows
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cunxiang-db")
        self._pending: Pending = {}
        self._count = 0
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
        row = rows.get(key)
        if row is None:
            rows[key] = dict(values)
            self._count += 1
            if self._count >= self._max_rows:
                self._wake.set()
        else:
            row.update(values)

    @property
    def backlog(self) -> int:
        return self._count

    async def flush(self) -> None:
        """Write everything recorded so far; on a passing failure the rows wait for the next flush."""
        async with self._lock:
            if not self._pending:
                return
            batch, count = self._pending, self._count
            self._pending, self._count = {}, 0
            try:
                # Shielded: a cancelled caller must not abandon a batch the thread is still writing.
                await asyncio.shield(
                    asyncio.get_running_loop().run_in_executor(self._executor, self._write, batch)
                )
            except BaseException:
                self.metrics.db_flush_errors.inc()
                self._restore(batch)
                raise
            self.metrics.db_flushes.inc()
            self.metrics.db_flush_rows.observe(count)

    async def run(self) -> None:
        """Flush every `interval` (sooner when the batch is full) until `stop`; survive outages."""
        while not self._stopping:
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

    def _restore(self, batch: Pending) -> None:
        for table, rows in batch.items():
            current = self._pending.setdefault(table, {})
            for key, values in rows.items():
                newer = current.get(key)
                current[key] = values if newer is None else {**values, **newer}
        self._count = sum(len(rows) for rows in self._pending.values())

    def _write(self, batch: Pending) -> None:
        try:
            with self.engine.begin() as connection:
                for table, rows in batch.items():
                    _update_rows(connection, table, rows)
        except Exception as exc:
            if _passing(exc):
                raise
            self._write_row_by_row(batch)

    def _write_row_by_row(self, batch: Pending) -> None:
        for table, rows in batch.items():
            for key, values in rows.items():
                try:
                    with self.engine.begin() as connection:
                        _update_rows(connection, table, {key: values})
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


def _update_rows(connection: Connection, table: Table, rows: dict[Key, dict[str, Any]]) -> None:
    """UPDATE rows by primary key, one executemany per set of columns."""
    pk = [column.name for column in table.primary_key.columns]
    by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for key, values in rows.items():
        params = {f"k_{name}": part for name, part in zip(pk, key, strict=True)}
        params.update({f"v_{name}": value for name, value in values.items()})
        by_shape.setdefault(tuple(sorted(values)), []).append(params)
    for shape, params_list in by_shape.items():
        statement = (
            update(table)
            .where(and_(*(table.c[name] == bindparam(f"k_{name}") for name in pk)))
            .values({name: bindparam(f"v_{name}") for name in shape})
        )
        connection.execute(statement, params_list)
