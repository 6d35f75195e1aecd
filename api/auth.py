"""Who is asking, and whether they may: the principal of a request and the role it needs.

Every route but sign-in, the terminals' media downloads, `/healthz` and `/metrics` names the least
role it needs (`who: Viewer`, `who: Operator`...); routes about a region, terminal or broadcast
also check that it lies within the principal's region (`ensure_covers`). A request carries either
an access token (`Authorization: Bearer <JWT>` from `POST /api/v1/auth/token`) or an API key
(`X-API-Key: cxk_...`, or as the bearer token).
"""

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from pydantic import BaseModel
from sqlmodel import Session

from api.deps import ControllerDep
from controller.accounts import Principal, Role, account_principal, api_key_principal, is_api_key
from controller.models import Account
from controller.tokens import TokenInvalid, read_access_token

TOKEN_URL = "/api/v1/auth/token"
ACCESS_COOKIE = "cx_access"
"""the console's access token (HttpOnly, SameSite=Strict)"""
CONSOLE_HEADER = "X-Cunxiang-Console"
"""sent by the console's own scripts: a request carried by the cookie alone and changing something
must have it, which a page on another site cannot add without the browser asking us first (CORS)"""
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

bearer_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False)


class Problem(BaseModel):
    """Every error answer: what went wrong, in a sentence."""

    detail: Any


def _unauthorised(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def source_of(request: Request) -> str | None:
    return request.client.host if request.client else None


def current_principal(
    request: Request,
    controller: ControllerDep,
    token: Annotated[str | None, Depends(bearer_scheme)],
    key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    """The account or API key behind the request; 401 when there is none or it is not valid."""
    source = source_of(request)
    if key is None and token is not None and is_api_key(token):
        key, token = token, None
    if key is None and token is None and ACCESS_COOKIE in request.cookies:
        if request.method not in _SAFE_METHODS and CONSOLE_HEADER not in request.headers:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"a change signed in by the console's cookie must come from the console ({CONSOLE_HEADER})",
            )
        token = request.cookies[ACCESS_COOKIE]
    with Session(controller.engine) as session:
        if key is not None:
            principal = api_key_principal(session, key, source)
            if principal is None:
                raise _unauthorised("the API key is not valid (unknown, revoked or mistyped)")
            return principal
        if token is None:
            raise _unauthorised(f"sign in first: POST {TOKEN_URL}, or send an API key in X-API-Key")
        try:
            claims = read_access_token(controller.signing_key, token)
        except TokenInvalid as exc:
            raise _unauthorised(str(exc)) from None
        account = session.get(Account, claims.account_id)
        if account is None or account.disabled_at is not None:
            raise _unauthorised("the account can no longer sign in")
        if account.token_version != claims.token_version:
            raise _unauthorised("the account's password, role or region changed: sign in again")
        return account_principal(account, source)


def require(role: Role) -> Any:
    """A dependency answering the principal if its role is at least `role`, else 403."""

    def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.at_least(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this needs the {role.value} role or above; {principal.name} is {principal.role.value}",
            )
        return principal

    return check


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Approver = Annotated[Principal, Depends(require(Role.APPROVER))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def ensure_covers(principal: Principal, codes: str | list[str], what: str) -> None:
    """403 unless every region code lies within the principal's region."""
    outside = sorted({c for c in ([codes] if isinstance(codes, str) else codes) if not principal.covers(c)})
    if outside:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{what} lies outside your region {principal.region}: {', '.join(outside[:10])}",
        )


def covering(codes: list[str], default: str) -> str:
    """The narrowest region holding every code (codes nest by prefix: 2, 4, 6, 9, 12 digits)."""
    for n in (12, 9, 6, 4, 2):
        if codes and all(len(code) >= n and code[:n] == codes[0][:n] for code in codes):
            return codes[0][:n]
    return default


def sees(principal: Principal, codes: list[str]) -> bool:
    """Whether something about these regions concerns the principal: it lies within the principal's
    region, or covers it (a county alert reaching a township's villages concerns the township)."""
    return any(principal.covers(c) or principal.region.startswith(c) for c in codes)


Responses = dict[int | str, dict[str, Any]]
"""FastAPI's `responses=`: status → the OpenAPI description of that answer"""

AUTH_RESPONSES: Responses = {
    401: {"model": Problem, "description": "not signed in, or the token or API key is not valid"},
    403: {"model": Problem, "description": "the role or region does not allow it"},
}

UNREADABLE: Responses = {
    400: {"model": Problem, "description": "the body cannot be read (not UTF-8, or a broken form)"}
}
"""FastAPI's answer, before any validation, to a body it cannot decode: every route taking one"""
