"""The audit trail on real databases: the chain, what tampering it reveals, the guards, search, the CLI."""

import hashlib
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, select

from controller import audit
from controller.audit import AuditEntry, AuditRecord, append, failures_since, search, verify
from controller.db import init_schema, make_engine
from tests.processes import clean_env

T0 = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    init_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """For checks of the walk's own logic, which no database changes."""
    engine = make_engine(sqlite_url)
    init_schema(engine)
    yield engine
    engine.dispose()


def _entry(i: int) -> AuditEntry:
    return AuditEntry(
        actor=f"user{i % 3}",
        action=("auth.login", "broadcast.create", "broadcast.approve", "schedule.update")[i % 4],
        actor_region="421202",
        source="10.0.0.7",
        object_type="broadcast",
        object_id=f"b-{i}",
        region="421202100001",
        detail={"text": f"第{i}次 山洪预警", "level": i, "terminals": ["t-1", "t-2"]},
    )


def _append_records(engine: Engine, count: int) -> list[AuditRecord]:
    """`count` records, each in its own transaction as the API would write them."""
    records = []
    for i in range(1, count + 1):
        with Session(engine, expire_on_commit=False) as session:
            records.append(append(session, _entry(i), T0 + timedelta(minutes=i)))
            session.commit()
    return records


def _verify(engine: Engine, expect_head: tuple[int, str] | None = None) -> audit.Verification:
    with Session(engine) as session:
        return verify(session, expect_head=expect_head)


def _tamper(engine: Engine, *statements: str) -> None:
    """What an attacker with full database rights does: drop the guards, then change records."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("DROP TRIGGER audit_record_append_only ON audit_record"))
        else:
            connection.execute(text("DROP TRIGGER audit_record_no_update"))
            connection.execute(text("DROP TRIGGER audit_record_no_delete"))
        for statement in statements:
            connection.execute(text(statement))


def _documented_hash(fields: list[object]) -> str:
    """The record hash exactly as docs/audit.md defines it, independent of controller.audit."""
    digest = hashlib.sha256()
    for value in fields:
        if value is None:
            digest.update(b"-\n")
            continue
        data = str(value).encode("utf-8")
        digest.update(str(len(data)).encode("ascii") + b":" + data + b"\n")
    return digest.hexdigest()


def _detail_text(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_appended_records_form_a_chain_that_verifies(engine: Engine) -> None:
    records = _append_records(engine, 5)

    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == "0" * 64
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(records))
    result = _verify(engine)
    assert result == audit.Verification(True, 5, 5, records[-1].hash, [])


def test_an_empty_trail_verifies_with_the_genesis_head(sqlite_engine: Engine) -> None:
    assert _verify(sqlite_engine) == audit.Verification(True, 0, 0, "0" * 64, [])


def test_record_hash_follows_the_documented_encoding(engine: Engine) -> None:
    first, second = _append_records(engine, 2)
    entry = _entry(2)
    fields: list[object] = [
        2,
        "2025-06-01T08:02:00.000000Z",
        entry.actor,
        entry.actor_region,
        entry.source,
        entry.action,
        "ok",
        entry.object_type,
        entry.object_id,
        entry.region,
        _detail_text(entry.detail),
        first.hash,
    ]

    assert second.hash == _documented_hash(fields)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT detail FROM audit_record WHERE seq = 2")).scalar_one()
    assert stored == _detail_text(entry.detail)


def test_absent_fields_hash_as_the_documented_null_marker(engine: Engine) -> None:
    with Session(engine) as session:
        none = append(session, AuditEntry(actor="cli", action="account.create"), T0)
        session.commit()
        fields: list[object] = [1, "2025-06-01T08:00:00.000000Z", "cli", None, None, "account.create"]
        fields += ["ok", None, None, None, "{}", "0" * 64]
        assert none.hash == _documented_hash(fields)


@pytest.mark.parametrize(
    ("change", "column"),
    [('detail = \'{"text":"forged"}\'', "detail"), ("actor = 'someone-else'", "actor")],
)
def test_an_edited_record_is_named(engine: Engine, change: str, column: str) -> None:
    _append_records(engine, 5)
    _tamper(engine, f"UPDATE audit_record SET {change} WHERE seq = 3")

    result = _verify(engine)

    assert not result.ok
    assert result.problems == ["record 3 was edited (hash mismatch)"], column


def test_a_removed_middle_record_is_named(engine: Engine) -> None:
    _append_records(engine, 5)
    _tamper(engine, "DELETE FROM audit_record WHERE seq = 3")

    assert _verify(engine).problems == ["record 3 is missing (chain broken between 2 and 4)"]


def test_removed_last_records_are_seen_through_the_head(engine: Engine) -> None:
    _append_records(engine, 5)
    _tamper(engine, "DELETE FROM audit_record WHERE seq >= 4")

    assert _verify(engine).problems == ["the last 2 records were removed (head says 5)"]


def test_a_removed_head_row_is_named(engine: Engine) -> None:
    _append_records(engine, 3)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_head"))

    assert _verify(engine).problems == ["the head row is missing (the chain runs to 3)"]


def test_a_head_moved_back_leaves_records_beyond_it(engine: Engine) -> None:
    records = _append_records(engine, 3)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE audit_head SET seq = 2, hash = '{records[1].hash}'"))

    assert _verify(engine).problems == ["record 3 lies beyond the head (head says 2)"]


def test_verify_lists_the_first_problems_and_counts_the_rest(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "_MAX_PROBLEMS", 2)
    _append_records(sqlite_engine, 5)
    _tamper(sqlite_engine, "UPDATE audit_record SET actor = 'mallory'")

    assert _verify(sqlite_engine).problems == [
        "record 1 was edited (hash mismatch)",
        "record 2 was edited (hash mismatch)",
        "... and 3 more problems",
    ]


def test_a_forged_record_inserted_in_the_middle_is_named(engine: Engine) -> None:
    records = _append_records(engine, 5)
    forged_fields: list[object] = [3, "2025-06-01T08:02:30.000000Z", "user0", None, None, "account.create"]
    forged_fields += ["ok", None, None, None, "{}", records[1].hash]
    forged = _documented_hash(forged_fields)
    at = "2025-06-01 08:02:30" + ("+00" if engine.dialect.name == "postgresql" else "")
    # Make room at seq 3 by renumbering the later records, then insert a record whose own hash is right.
    _tamper(
        engine,
        "UPDATE audit_record SET seq = -seq WHERE seq >= 3",
        "UPDATE audit_record SET seq = 1 - seq WHERE seq < 0",
        "INSERT INTO audit_record (seq, at, actor, action, outcome, detail, prev_hash, hash) VALUES "
        f"(3, '{at}', 'user0', 'account.create', 'ok', '{{}}', '{records[1].hash}', '{forged}')",
        f"UPDATE audit_head SET seq = 6, hash = '{records[-1].hash}'",
    )

    problems = _verify(engine).problems

    assert problems == [
        "record 4 does not chain to record 3 (prev_hash mismatch)",
        "record 4 was edited (hash mismatch)",  # its seq changed
        "record 5 was edited (hash mismatch)",
        "record 6 was edited (hash mismatch)",
    ]


def test_tampering_beyond_the_first_page_is_found(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "_PAGE", 3)
    records = _append_records(sqlite_engine, 10)
    assert _verify(sqlite_engine) == audit.Verification(True, 10, 10, records[-1].hash, [])

    _tamper(sqlite_engine, "DELETE FROM audit_record WHERE seq IN (7, 8)")

    assert _verify(sqlite_engine).problems == ["records 7-8 are missing (chain broken between 6 and 9)"]


def test_a_rewritten_chain_fails_the_noted_head(engine: Engine) -> None:
    records = _append_records(engine, 3)
    assert _verify(engine, (2, records[1].hash)).ok

    assert _verify(engine, (2, "f" * 64)).problems == [
        f"record 2 no longer has the noted hash {'f' * 64} (the chain was rewritten)"
    ]
    assert _verify(engine, (9, records[1].hash)).problems == [
        "the noted head 9 is not in the chain (it ends at 3)"
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_record SET actor = 'x' WHERE seq = 1",
        "DELETE FROM audit_record WHERE seq = 1",
        "TRUNCATE audit_record",
    ],
)
def test_the_database_refuses_to_change_audit_records(engine: Engine, statement: str) -> None:
    if statement.startswith("TRUNCATE") and engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    _append_records(engine, 1)
    init_schema(engine)  # installing the guards again changes nothing

    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text(statement))
    assert _verify(engine).records == 1


def test_concurrent_appends_on_postgresql_form_one_chain(database_url: str, engine: Engine) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("on SQLite each process appends from one writer thread")
    threads, each = 4, 50
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def appender(n: int) -> None:
        own = make_engine(database_url)
        try:
            start.wait()
            for _ in range(each):
                with Session(own) as session:
                    append(session, AuditEntry(actor=f"p{n}", action="terminal.register"), T0)
                    session.commit()
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    workers = [threading.Thread(target=appender, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    result = _verify(engine)
    assert (result.ok, result.records, result.head_seq) == (True, threads * each, threads * each)
    with Session(engine) as session:
        assert len(set(session.exec(select(AuditRecord.seq)).all())) == threads * each


@pytest.fixture
def trail(engine: Engine) -> Engine:
    """Records across actors, actions, regions and times (seq = minute after T0)."""
    entries = [
        AuditEntry("alice", "auth.login", source="10.0.0.1"),
        AuditEntry("alice", "broadcast.create", object_id="b-1", region="421202100001", detail={"t": "山洪"}),
        AuditEntry("bob", "broadcast.approve", object_id="b-1", region="421202100001"),
        AuditEntry("bob", "schedule.update", object_id="s-1", region="421221", detail={"t": "Morning News"}),
        AuditEntry("key:sirens", "broadcast.create", object_id="b-2", region="421221100002"),
        AuditEntry("carol", "terminal.register", object_id="t-9", region="421202200003"),
    ]
    with Session(engine) as session:
        for minute, entry in enumerate(entries, start=1):
            append(session, entry, T0 + timedelta(minutes=minute))
        session.commit()
    return engine


def _seqs(engine: Engine, **filters: Any) -> list[int]:
    with Session(engine) as session:
        return [r.seq for r in search(session, **filters)]


def test_search_returns_newest_first_and_filters_by_actor_and_object(trail: Engine) -> None:
    assert _seqs(trail) == [6, 5, 4, 3, 2, 1]
    assert _seqs(trail, actor="bob") == [4, 3]
    assert _seqs(trail, object_id="b-1") == [3, 2]


def test_search_matches_actions_by_prefix(trail: Engine) -> None:
    assert _seqs(trail, action="broadcast.") == [5, 3, 2]
    assert _seqs(trail, action="broadcast.create") == [5, 2]


def test_search_keeps_records_under_the_given_regions(trail: Engine) -> None:
    assert _seqs(trail, regions=["421202"]) == [6, 3, 2]
    assert _seqs(trail, regions=["421202100", "421221"]) == [5, 4, 3, 2]
    assert _seqs(trail, regions=[]) == []


def test_search_filters_by_time_since_inclusive_until_exclusive(trail: Engine) -> None:
    assert _seqs(trail, since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4)) == [3, 2]


def test_search_finds_text_in_detail_object_and_actor(trail: Engine) -> None:
    assert _seqs(trail, text="山洪") == [2]
    assert _seqs(trail, text="morning") == [4]
    assert _seqs(trail, text="t-9") == [6]
    assert _seqs(trail, text="SIRENS") == [5]


def test_search_pages_with_before_seq(trail: Engine) -> None:
    assert _seqs(trail, limit=4) == [6, 5, 4, 3]
    assert _seqs(trail, limit=4, before_seq=3) == [2, 1]


def test_failures_since_counts_denied_attempts_by_actor_and_source(engine: Engine) -> None:
    attempts = [
        ("alice", "10.0.0.1", "denied", 1),
        ("alice", "10.0.0.2", "denied", 5),
        ("alice", "10.0.0.1", "ok", 6),
        ("bob", "10.0.0.1", "denied", 7),
        ("alice", "10.0.0.1", "denied", 8),
    ]
    with Session(engine) as session:
        for actor, source, outcome, minute in attempts:
            entry = AuditEntry(actor, "auth.login", outcome=outcome, source=source)
            append(session, entry, T0 + timedelta(minutes=minute))
        append(session, AuditEntry("alice", "broadcast.create", outcome="denied"), T0 + timedelta(minutes=9))
        session.commit()

        def count(**by: str) -> int:
            return failures_since(session, action="auth.login", since=T0 + timedelta(minutes=5), **by)

        assert count(actor="alice") == 2
        assert count(source="10.0.0.1") == 2
        assert count(actor="alice", source="10.0.0.1") == 1
        assert count() == 3


def test_entries_refuse_unknown_outcomes_and_unserialisable_detail(sqlite_engine: Engine) -> None:
    with pytest.raises(ValueError, match="outcome"):
        AuditEntry("alice", "auth.login", outcome="maybe")
    with pytest.raises(TypeError):
        AuditEntry("alice", "auth.login", detail={"when": T0})
    with Session(sqlite_engine) as session, pytest.raises(ValueError, match="naive"):
        append(session, AuditEntry("alice", "auth.login"), datetime(2025, 6, 1, 8, 0))


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", "audit", "verify", *args],
        cwd=ROOT,
        env=clean_env(database_url=database_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_verify_prints_the_head_then_fails_after_tampering(database_url: str, engine: Engine) -> None:
    records = _append_records(engine, 3)

    intact = _cli(database_url)
    assert (intact.returncode, intact.stdout) == (
        0,
        f"audit trail intact: 3 records, head 3 {records[-1].hash}\n",
    )

    _tamper(engine, "DELETE FROM audit_record WHERE seq = 2")
    broken = _cli(database_url)
    assert broken.returncode == 1
    assert "record 2 is missing (chain broken between 1 and 3)" in broken.stdout


def test_cli_verify_checks_a_noted_head(database_url: str, engine: Engine) -> None:
    records = _append_records(engine, 2)

    assert _cli(database_url, "--expect-head", f"1:{records[0].hash}").returncode == 0
    mismatch = _cli(database_url, "--expect-head", f"1:{'a' * 64}")
    assert mismatch.returncode == 1
    assert "record 1 no longer has the noted hash" in mismatch.stdout


def test_cli_verify_refuses_a_malformed_noted_head(sqlite_url: str) -> None:
    assert _cli(sqlite_url, "--expect-head", "1:nothex").returncode == 2
