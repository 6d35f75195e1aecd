"""Signing in: the OAuth2 password flow, refreshing, who am I, changing one's password."""

import asyncio
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlmodel import Session, select

from api.auth import AUTH_RESPONSES, UNREADABLE, Problem, Viewer, source_of
from api.deps import ControllerDep, read
from controller.accounts import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    AccountRejected,
    hash_password,
    needs_rehash,
    password_matches,
)
from controller.audit import AuditEntry, append, commit_entry, failures_since
from controller.models import Account, Region
from controller.service import Controller
from controller.tokens import (
    TokenInvalid,
    access_token,
    issue_refresh_token,
    revoke_refresh_tokens,
    use_refresh_token,
)
from devices.messages import now_utc

router = APIRouter(prefix="/auth", tags=["auth"])

LOGIN = "auth.login"


class TokenAnswer(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="seconds the access token is valid")
    refresh_token: str = Field(description="spend it once at /api/v1/auth/refresh for new tokens")
    username: str
    role: str
    region: str


class RefreshRequest(BaseModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=200)]


class Me(BaseModel):
    name: str
    kind: str
    role: str
    region: str
    region_name: str | None


class PasswordChange(BaseModel):
    current_password: Annotated[str, Field(max_length=PASSWORD_MAX)]
    new_password: Annotated[str, Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]


def token_answer(controller: Controller, account: Account, refresh: str) -> TokenAnswer:
    ttl = controller.settings.access_token_ttl_s
    return TokenAnswer(
        access_token=access_token(controller.signing_key, account, now_utc(), timedelta(seconds=ttl)),
        expires_in=ttl,
        refresh_token=refresh,
        username=account.username,
        role=account.role,
        region=account.region,
    )


@router.post(
    "/token",
    response_model=TokenAnswer,
    responses={
        **UNREADABLE,
        401: {"model": Problem, "description": "wrong username or password"},
        429: {"model": Problem, "description": "too many failed sign-ins: wait (Retry-After)"},
    },
)
async def sign_in(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, controller: ControllerDep
) -> TokenAnswer:
    """Exchange a username and password (an OAuth2 password form) for an access token and a
    refresh token. Failed attempts are recorded; too many for one username, or from one address,
    within CUNXIANG_LOGIN_FAILURE_WINDOW_S are refused with 429 until older ones leave the window."""
    account, refresh = await password_sign_in(controller, form.username, form.password, source_of(request))
    return token_answer(controller, account, refresh)


async def password_sign_in(
    controller: Controller, username: str, password: str, source: str | None
) -> tuple[Account, str]:
    """Check a username and password, within the failure limits; the account and a new refresh
    token, or HTTPException 401 / 429. Every attempt is in the audit trail."""
    settings = controller.settings
    now = now_utc()
    window = timedelta(seconds=settings.login_failure_window_s)

    def failures(session: Session) -> tuple[int, int]:
        since = now - window
        return (
            failures_since(session, action=LOGIN, actor=username, since=since),
            failures_since(session, action=LOGIN, source=source, since=since) if source else 0,
        )

    by_name, by_source = await read(controller, failures)
    if by_name >= settings.login_failures_max or by_source >= settings.login_failures_per_source:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many failed sign-ins; try again later",
            headers={"Retry-After": str(settings.login_failure_window_s)},
        )
    account = await read(
        controller, lambda s: s.exec(select(Account).where(Account.username == username)).first()
    )
    valid = await asyncio.to_thread(password_matches, password, account.password_hash if account else None)
    if account is None or not valid or account.disabled_at is not None:
        entry = AuditEntry(actor=username, action=LOGIN, outcome="denied", source=source)
        await controller.writer.call(lambda s: commit_entry(s, entry, now))
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong username or password (or the account is disabled)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    rehashed = (
        await asyncio.to_thread(hash_password, password) if needs_rehash(account.password_hash) else None
    )
    ttl = timedelta(seconds=settings.refresh_token_ttl_s)

    def start_session(session: Session) -> tuple[Account, str]:
        current = session.get(Account, account.id)
        assert current is not None
        if rehashed is not None:
            current.password_hash = rehashed
            session.add(current)
        refresh = issue_refresh_token(session, current, now, ttl)
        append(
            session,
            AuditEntry(
                actor=current.username,
                actor_region=current.region,
                action=LOGIN,
                source=source,
                object_type="account",
                object_id=current.username,
                region=current.region,
            ),
            now,
        )
        session.commit()
        session.refresh(current)
        return current, refresh

    return await controller.writer.call(start_session)


@router.post(
    "/refresh",
    response_model=TokenAnswer,
    responses={
        **UNREADABLE,
        401: {"model": Problem, "description": "unknown, used, revoked or expired refresh token"},
    },
)
async def refresh(body: RefreshRequest, controller: ControllerDep) -> TokenAnswer:
    """Spend a refresh token for a new access token and a new refresh token. Each refresh token
    works once: presenting one again revokes every token of that sign-in."""
    account, new = await spend_refresh_token(controller, body.refresh_token)
    return token_answer(controller, account, new)


async def spend_refresh_token(controller: Controller, token: str) -> tuple[Account, str]:
    """The account and a new refresh token for a refresh token, or HTTPException 401."""
    ttl = timedelta(seconds=controller.settings.refresh_token_ttl_s)
    try:
        return await controller.writer.call(lambda s: use_refresh_token(s, token, now_utc(), ttl))
    except TokenInvalid as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}
        ) from None


@router.get("/me", response_model=Me, responses=AUTH_RESPONSES)
def me(who: Viewer, controller: ControllerDep) -> Me:
    """The signed-in account (or API key): its role and its region."""
    with Session(controller.engine) as session:
        region = session.get(Region, who.region)
    return Me(
        name=who.name,
        kind=who.kind,
        role=who.role.value,
        region=who.region,
        region_name=region.name if region else None,
    )


@router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **AUTH_RESPONSES,
        **UNREADABLE,
        422: {"model": Problem, "description": "wrong current password, or a weak new one"},
    },
)
async def change_password(body: PasswordChange, who: Viewer, controller: ControllerDep) -> None:
    """Change one's own password; every other sign-in of the account ends."""
    if who.kind != "account":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "an API key has no password")
    account = await read(controller, lambda s: s.get(Account, who.id))
    assert account is not None
    if not await asyncio.to_thread(password_matches, body.current_password, account.password_hash):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the current password is wrong")
    try:
        new_hash = await asyncio.to_thread(hash_password, body.new_password)
    except AccountRejected as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    now = now_utc()

    def store(session: Session) -> None:
        current = session.get(Account, who.id)
        assert current is not None
        current.password_hash = new_hash
        current.token_version += 1
        session.add(current)
        revoke_refresh_tokens(session, current.id, now)
        append(session, who.audit("account.password", "account", current.username, current.region), now)
        session.commit()

    await controller.writer.call(store)
