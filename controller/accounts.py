"""Operator accounts and API keys: who they are, their role, and the region they act in.

Passwords are hashed with argon2id (argon2-cffi, its default parameters); a hash made with weaker
parameters than today's is upgraded at the next sign-in. API keys are 192-bit random secrets, so a
plain SHA-256 is enough to keep them from being readable in the database, and checking one costs
microseconds, not the tens of milliseconds a password hash is meant to cost.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from controller.audit import AuditEntry
from controller.models import Account, ApiKey, Region
from devices.messages import RegionCode

USERNAME_PATTERN = r"^[a-z][a-z0-9._-]{1,63}$"
API_KEY_NAME_PATTERN = r"^[a-z][a-z0-9._-]{1,63}$"
PASSWORD_MIN = 10
PASSWORD_MAX = 256
_API_KEY_PREFIX = "cxk_"

_hasher = PasswordHasher()
# Verified against for unknown usernames, so a sign-in takes as long whether the account exists or not.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class Role(StrEnum):
    """What an account may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"
    """sees terminals, broadcasts, schedules and alarms"""
    OPERATOR = "operator"
    """sends broadcasts, keeps schedules, programmes and groups, acknowledges alarms"""
    APPROVER = "approver"
    """approves others' level I/II alerts; may cancel or correct anyone's broadcast"""
    ADMIN = "admin"
    """manages accounts, API keys and terminals"""

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def at_least(self, other: "Role") -> bool:
        return self.rank >= other.rank


class AccountRejected(ValueError):
    """An account or key that cannot be created or changed as asked; the message says why."""


class AccountNotFound(LookupError):
    """No such account or API key."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: a signed-in account or an API key, with the authority it carries."""

    name: str
    """the username, or `key:<name>` for an API key"""
    role: Role
    region: str
    kind: Literal["account", "api_key"]
    id: str
    source: str | None = None
    """where the request came from (client address), for the audit trail"""

    def covers(self, code: str) -> bool:
        """Whether a region (or a terminal's region) lies within this principal's region.
        Division codes nest by prefix: 421202 ⊃ 421202100 ⊃ 421202100001."""
        return code.startswith(self.region)

    def at_least(self, role: Role) -> bool:
        return self.role.at_least(role)

    def audit(
        self,
        action: str,
        object_type: str | None = None,
        object_id: str | None = None,
        region: str | None = None,
        outcome: str = "ok",
        **detail: object,
    ) -> AuditEntry:
        """The audit record of this principal doing `action`."""
        return AuditEntry(
            actor=self.name,
            actor_region=self.region,
            source=self.source,
            action=action,
            outcome=outcome,
            object_type=object_type,
            object_id=object_id,
            region=region,
            detail=dict(detail),
        )


class NewAccount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Annotated[str, Field(pattern=USERNAME_PATTERN)]
    role: Role
    region: RegionCode
    password: Annotated[str, Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]


def hash_password(password: str) -> str:
    check_password(password)
    return _hasher.hash(password)


def check_password(password: str) -> None:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise AccountRejected(f"a password must have {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    if len(set(password)) < 4:
        raise AccountRejected("a password must not repeat one or two characters over and over")


def password_matches(password: str, stored: str | None) -> bool:
    """Check a password (about 50 ms by design); an absent hash still costs the same time."""
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def known_region(session: Session, code: str) -> None:
    if session.get(Region, code) is None:
        raise AccountRejected(f"unknown region code {code}")


def create_account(
    session: Session, new: NewAccount, password_hash: str, created_by: str | None, now: datetime
) -> Account:
    """Store an account (not committed); raises AccountRejected for a taken name or unknown region."""
    if session.exec(select(Account).where(Account.username == new.username)).first() is not None:
        raise AccountRejected(f"the username {new.username!r} is taken")
    known_region(session, new.region)
    account = Account(
        id=secrets.token_hex(8),
        username=new.username,
        role=new.role.value,
        region=new.region,
        password_hash=password_hash,
        created_at=now,
        created_by=created_by,
    )
    session.add(account)
    return account


def account_named(session: Session, username: str) -> Account:
    account = session.exec(select(Account).where(Account.username == username)).first()
    if account is None:
        raise AccountNotFound(f"no account {username!r}")
    return account


def account_principal(account: Account, source: str | None = None) -> Principal:
    return Principal(
        name=account.username,
        role=Role(account.role),
        region=account.region,
        kind="account",
        id=account.id,
        source=source,
    )


def new_api_key(
    session: Session, name: str, role: Role, region: str, created_by: str | None, now: datetime
) -> tuple[ApiKey, str]:
    """Store a new API key (not committed); returns it and the key itself, which is shown once."""
    if session.exec(select(ApiKey).where(ApiKey.name == name)).first() is not None:
        raise AccountRejected(f"an API key named {name!r} exists")
    known_region(session, region)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    record = ApiKey(
        id=key_id,
        name=name,
        role=role.value,
        region=region,
        secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
        created_at=now,
        created_by=created_by,
    )
    session.add(record)
    return record, f"{_API_KEY_PREFIX}{key_id}_{secret}"


def is_api_key(value: str) -> bool:
    return value.startswith(_API_KEY_PREFIX)


def api_key_principal(session: Session, key: str, source: str | None) -> Principal | None:
    """The principal of a valid, unrevoked API key; None for anything else."""
    key_id, _, secret = key.removeprefix(_API_KEY_PREFIX).partition("_")
    record = session.get(ApiKey, key_id) if key_id and secret else None
    if record is None or record.revoked_at is not None:
        return None
    if not hmac.compare_digest(record.secret_sha256, hashlib.sha256(secret.encode()).hexdigest()):
        return None
    return Principal(
        name=f"key:{record.name}",
        role=Role(record.role),
        region=record.region,
        kind="api_key",
        id=record.id,
        source=source,
    )


def accounts_within(session: Session, region: str) -> list[Account]:
    query = select(Account).where(col(Account.region).startswith(region)).order_by(col(Account.username))
    return list(session.exec(query).all())


def api_keys_within(session: Session, region: str) -> list[ApiKey]:
    query = select(ApiKey).where(col(ApiKey.region).startswith(region)).order_by(col(ApiKey.name))
    return list(session.exec(query).all())
