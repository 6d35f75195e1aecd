"""`cunxiang audit verify`: check the audit chain in the configured database."""

import re
import sys

from sqlalchemy import inspect
from sqlmodel import Session

from controller.audit import verify
from controller.db import make_engine
from controller.settings import Settings

_HEAD = re.compile(r"(\d+):([0-9a-f]{64})")


def run_verify(settings: Settings, expect_head: str | None) -> int:
    """Print the head of an intact trail and return 0, or print each problem and return 1."""
    expected: tuple[int, str] | None = None
    if expect_head is not None:
        match = _HEAD.fullmatch(expect_head.strip().lower())
        if match is None:
            print(
                f"--expect-head wants SEQ:HASH (a number and 64 hex digits), not {expect_head!r}",
                file=sys.stderr,
            )
            return 2
        expected = (int(match[1]), match[2])
    engine = make_engine(settings.database_url)
    try:
        # Checking must not create tables: a database without them has no trail to vouch for.
        if not inspect(engine).has_table("audit_record"):
            print("no audit trail in this database (its tables were never created)")
            return 1
        with Session(engine) as session:
            result = verify(session, expect_head=expected)
    finally:
        engine.dispose()
    if not result.ok:
        for problem in result.problems:
            print(problem)
        print(f"audit trail NOT intact: {len(result.problems)} problems in {result.records} records")
        return 1
    print(f"audit trail intact: {result.records} records, head {result.head_seq} {result.head_hash}")
    return 0
