"""Accounts and API keys, managed by administrators within their own region."""

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, select

from api.auth import AUTH_RESPONSES, UNREADABLE, Admin, Problem, Responses, ensure_covers
from api.deps import ControllerDep, read
from controller.accounts import (
    API_KEY_NAME_PATTERN,
    PASSWORD_MAX,
    PASSWORD_MIN,
    USERNAME_PATTERN,
    AccountNotFound,
    NewAccount,
    Principal,
    Role,
    account_named,
    accounts_within,
    api_keys_within,
    create_account,
    hash_password,
    known_region,
    new_api_key,
)
from controller.audit import append
from controller.models import Account, ApiKey
from controller.tokens import revoke_refresh_tokens
from devices.messages import RegionCode, now_utc

router = APIRouter(tags=["accounts"], responses=AUTH_RESPONSES)

UsernamePath = Annotated[str, Path(pattern=USERNAME_PATTERN)]
KeyNamePath = Annotated[str, Path(pattern=API_KEY_NAME_PATTERN)]
_REJECTED: Responses = {
    **UNREADABLE,
    422: {"model": Problem, "description": "taken name, unknown region, weak password"},
}
_UNKNOWN: Responses = {404: {"model": Problem, "description": "no such account or key within your region"}}


class AccountPublic(BaseModel):
    username: str
    role: str
    region: str
    created_at: datetime
    created_by: str | None
    disabled_at: datetime | None


class AccountChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    region: RegionCode | None = None
    disabled: bool | None = None
    password: Annotated[str, Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)] | None = Field(
        default=None, description="a new password set by the administrator (the user should change it)"
    )


class NewApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=API_KEY_NAME_PATTERN)]
    role: Role
    region: RegionCode


class ApiKeyPublic(BaseModel):
    name: str
    role: str
    region: str
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None


class ApiKeyIssued(ApiKeyPublic):
    key: str = Field(description="shown this once; only a hash is kept")


def _within(who: Principal, region: str, what: str) -> None:
    ensure_covers(who, region, what)


def _found(who: Principal, session: Session, username: str) -> Account:
    account = account_named(session, username)
    ensure_covers(who, account.region, f"account {username!r}")
    return account


@router.post(
    "/accounts", status_code=status.HTTP_201_CREATED, response_model=AccountPublic, responses=_REJECTED
)
async def new_account(body: NewAccount, who: Admin, controller: ControllerDep) -> Account:
    """Create an account in your region or below."""
    _within(who, body.region, "the account's region")
    password_hash = await asyncio.to_thread(hash_password, body.password)
    now = now_utc()

    def store(session: Session) -> Account:
        account = create_account(session, body, password_hash, who.name, now)
        append(
            session, who.audit("account.create", "account", body.username, body.region, role=body.role), now
        )
        session.commit()
        session.refresh(account)
        return account

    return await controller.writer.call(store)


@router.get("/accounts", response_model=list[AccountPublic])
async def accounts(who: Admin, controller: ControllerDep) -> list[Account]:
    """Accounts in your region and below."""
    return await read(controller, lambda session: accounts_within(session, who.region))


@router.get("/accounts/{username}", response_model=AccountPublic, responses=_UNKNOWN)
async def account(username: UsernamePath, who: Admin, controller: ControllerDep) -> Account:
    return await read(controller, lambda session: _found(who, session, username))


@router.patch("/accounts/{username}", response_model=AccountPublic, responses={**_UNKNOWN, **_REJECTED})
async def change_account(
    username: UsernamePath, body: AccountChange, who: Admin, controller: ControllerDep
) -> Account:
    """Change an account's role or region, disable or re-enable it, or reset its password. Any
    change but re-enabling ends the account's sign-ins. You cannot demote or disable yourself."""
    if body.region is not None:
        _within(who, body.region, "the new region")
    if username == who.name and (
        body.disabled or (body.role is not None and body.role is not Role.ADMIN) or body.region is not None
    ):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "you cannot disable, demote or move your own account; ask another administrator",
        )
    password_hash = await asyncio.to_thread(hash_password, body.password) if body.password else None
    now = now_utc()

    def store(session: Session) -> Account:
        found = _found(who, session, username)
        previous_region = found.region
        if body.region is not None:
            known_region(session, body.region)
            found.region = body.region
        if body.role is not None:
            found.role = body.role.value
        if password_hash is not None:
            found.password_hash = password_hash
        if body.disabled is not None:
            found.disabled_at = now if body.disabled else None
        if body.role is not None or body.region is not None or password_hash is not None or body.disabled:
            found.token_version += 1
            revoke_refresh_tokens(session, found.id, now)
        session.add(found)
        # The record's region is the new one; `region` is also audit()'s own argument.
        changes = body.model_dump(exclude_none=True, exclude={"password", "region"})
        if body.region is not None:
            changes["moved_from"] = previous_region
        if password_hash is not None:
            changes["password"] = "reset"
        append(session, who.audit("account.update", "account", found.username, found.region, **changes), now)
        session.commit()
        session.refresh(found)
        return found

    return await controller.writer.call(store)


@router.post(
    "/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyIssued, responses=_REJECTED
)
async def issue_api_key(body: NewApiKey, who: Admin, controller: ControllerDep) -> ApiKeyIssued:
    """An API key for a machine client (e.g. an upstream warning system), acting with `role` over
    `region`; the key is in this answer only."""
    _within(who, body.region, "the key's region")
    now = now_utc()

    def store(session: Session) -> ApiKeyIssued:
        record, key = new_api_key(session, body.name, body.role, body.region, who.name, now)
        append(session, who.audit("api_key.create", "api_key", body.name, body.region, role=body.role), now)
        session.commit()
        session.refresh(record)
        return ApiKeyIssued(**ApiKeyPublic.model_validate(record, from_attributes=True).model_dump(), key=key)

    return await controller.writer.call(store)


@router.get("/api-keys", response_model=list[ApiKeyPublic])
async def api_keys(who: Admin, controller: ControllerDep) -> list[ApiKey]:
    return await read(controller, lambda session: api_keys_within(session, who.region))


@router.delete("/api-keys/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=_UNKNOWN)
async def revoke_api_key(name: KeyNamePath, who: Admin, controller: ControllerDep) -> None:
    """Revoke a key: it stops working at once. Its record stays, for the audit trail."""
    now = now_utc()

    def store(session: Session) -> None:
        found = session.exec(select(ApiKey).where(ApiKey.name == name)).first()
        if found is None:
            raise AccountNotFound(f"no API key {name!r}")
        ensure_covers(who, found.region, f"API key {name!r}")
        if found.revoked_at is None:
            found.revoked_at = now
            session.add(found)
            append(session, who.audit("api_key.revoke", "api_key", name, found.region), now)
            session.commit()

    await controller.writer.call(store)
