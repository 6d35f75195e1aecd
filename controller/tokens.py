"""Sign-in tokens: short-lived access tokens (JWT, HS256) and single-use refresh tokens.

An access token names the account and the account's `token_version`; every request looks the
account up, so a disabled account, or one whose password, role or region changed, is refused at
once rather than when its token runs out. Refresh tokens are random, stored as hashes, used once;
using one twice means it was copied, and every token of that sign-in is revoked.

The signing key is shared by every controller process on the database (`server_key`), created by
whichever starts first, unless CUNXIANG_AUTH_SECRET sets it.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, update

from controller.models import Account, RefreshToken, ServerKey

ALGORITHM = "HS256"
_SIGNING_KEY_NAME = "token-signing"


class TokenInvalid(ValueError):
    """A token that is malformed, expired, revoked or of an account that can no longer sign in."""


@dataclass(frozen=True)
class AccessClaims:
    account_id: str
    token_version: int


def signing_key(session: Session) -> str:
    """The shared signing key, created on first use; two processes racing both end with the winner's."""
    found = session.get(ServerKey, _SIGNING_KEY_NAME)
    if found is not None:
        return found.value
    session.add(ServerKey(name=_SIGNING_KEY_NAME, value=secrets.token_urlsafe(48)))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
    found = session.get(ServerKey, _SIGNING_KEY_NAME)
    assert found is not None
    return found.value


def access_token(key: str, account: Account, now: datetime, ttl: timedelta) -> str:
    claims = {
        "sub": account.id,
        "name": account.username,
        "ver": account.token_version,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def read_access_token(key: str, token: str) -> AccessClaims:
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "ver"]})
    except jwt.PyJWTError as exc:
        raise TokenInvalid(f"invalid access token: {exc}") from None
    if not isinstance(claims["sub"], str) or not isinstance(claims["ver"], int):
        raise TokenInvalid("invalid access token: bad claims")
    return AccessClaims(account_id=claims["sub"], token_version=claims["ver"])


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_refresh_token(
    session: Session, account: Account, now: datetime, ttl: timedelta, family: str | None = None
) -> str:
    """A new refresh token (stored, not committed)."""
    token = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            id=_digest(token),
            account_id=account.id,
            family=family or secrets.token_hex(8),
            issued_at=now,
            expires_at=now + ttl,
        )
    )
    return token


def use_refresh_token(session: Session, token: str, now: datetime, ttl: timedelta) -> tuple[Account, str]:
    """Spend a refresh token for its account and a new one (committed); raises TokenInvalid.

    A token presented a second time revokes its whole family (committed before raising)."""
    found = session.get(RefreshToken, _digest(token))
    if found is None or found.revoked_at is not None or found.expires_at <= now:
        raise TokenInvalid("the refresh token is unknown, revoked or expired: sign in again")
    if found.used_at is not None:
        session.execute(
            update(RefreshToken)
            .where(col(RefreshToken.family) == found.family, col(RefreshToken.revoked_at).is_(None))
            .values(revoked_at=now)
        )
        session.commit()
        raise TokenInvalid("the refresh token was already used; every token of that sign-in is revoked")
    account = session.get(Account, found.account_id)
    if account is None or account.disabled_at is not None:
        raise TokenInvalid("the account can no longer sign in")
    found.used_at = now
    session.add(found)
    new = issue_refresh_token(session, account, now, ttl, family=found.family)
    session.commit()
    return account, new


def revoke_refresh_tokens(session: Session, account_id: str, now: datetime) -> None:
    """End every sign-in of an account (not committed): its password, role or region changed."""
    session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.account_id) == account_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=now)
    )
