"""`cunxiang admin`: the first administrator, and API keys, straight into the database.

There is no default password: the first account is made here, by someone with access to the
server, with a password read from standard input (a terminal asks twice, without echo).
"""

import getpass
import sys
from collections.abc import Callable
from typing import TypeVar

from pydantic import ValidationError
from sqlmodel import Session

from controller.accounts import AccountRejected, NewAccount, Role, create_account, hash_password, new_api_key
from controller.audit import AuditEntry, append
from controller.db import init_schema, make_engine
from controller.regions import ensure_bundled_regions
from controller.settings import Settings
from devices.messages import now_utc

T = TypeVar("T")


def _in_database(settings: Settings, work: Callable[[Session], T]) -> T:
    engine = make_engine(settings.database_url)
    try:
        init_schema(engine)
        with Session(engine) as session:
            ensure_bundled_regions(session)
            return work(session)
    finally:
        engine.dispose()


def read_password(from_stdin: bool) -> str:
    """One line of standard input, or (at a terminal, without --password-stdin) asked twice."""
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AccountRejected("the two passwords differ")
    return first


def create_admin(settings: Settings, username: str, region: str, role: str, password_stdin: bool) -> int:
    try:
        new = NewAccount(
            username=username, role=Role(role), region=region, password=read_password(password_stdin)
        )
        password_hash = hash_password(new.password)
    except (ValidationError, AccountRejected, ValueError) as exc:
        print(f"cannot create account {username!r}: {_reason(exc)}", file=sys.stderr)
        return 2

    def store(session: Session) -> None:
        now = now_utc()
        create_account(session, new, password_hash, "cli", now)
        append(session, _by_cli("account.create", "account", username, region, role), now)
        session.commit()

    try:
        _in_database(settings, store)
    except AccountRejected as exc:
        print(f"cannot create account {username!r}: {exc}", file=sys.stderr)
        return 2
    print(f"account {username} ({role}, region {region}) created")
    return 0


def issue_api_key(settings: Settings, name: str, region: str, role: Role) -> str:
    """A new API key, stored in the configured database; raises AccountRejected."""

    def store(session: Session) -> str:
        now = now_utc()
        _record, key = new_api_key(session, name, role, region, "cli", now)
        append(session, _by_cli("api_key.create", "api_key", name, region, role), now)
        session.commit()
        return key

    return _in_database(settings, store)


def create_api_key(settings: Settings, name: str, region: str, role: str) -> int:
    try:
        key = issue_api_key(settings, name, region, Role(role))
    except (AccountRejected, ValueError) as exc:
        print(f"cannot create API key {name!r}: {_reason(exc)}", file=sys.stderr)
        return 2
    print(key)
    return 0


def _by_cli(action: str, object_type: str, object_id: str, region: str, role: str) -> AuditEntry:
    """The audit record of something done on the server's command line."""
    return AuditEntry(
        actor="cli",
        source="cli",
        action=action,
        object_type=object_type,
        object_id=object_id,
        region=region,
        detail={"role": role},
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)
