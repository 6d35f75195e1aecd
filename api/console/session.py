"""Signing in to the console: the same accounts and tokens as the API, carried in cookies.

The access token is an HttpOnly, SameSite=Strict cookie, so the console's scripts never hold it and
no other site's page can send it; the refresh token is one too, sent only to `/session/refresh`.
A page whose access token ran out goes through `/session/refresh` and comes back; a script that
gets 401 asks `/session/refresh` itself and tries once more (`static/console.js`).
"""

from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response

from api.auth import ACCESS_COOKIE, api_key_scheme, bearer_scheme, current_principal, source_of
from api.console.i18n import LANGUAGE_COOKIE, LANGUAGES, labels, language_of
from api.console.rendering import render
from api.deps import ControllerDep
from api.routes.auth import password_sign_in, spend_refresh_token
from controller.accounts import Principal
from controller.models import Account
from controller.service import Controller
from controller.tokens import access_token
from devices.messages import now_utc

REFRESH_COOKIE = "cx_refresh"
REFRESH_PATH = "/session/refresh"

router = APIRouter(include_in_schema=False)


class SignInRequired(Exception):
    """A page asked for without a valid session: the app answers with a redirect."""

    def __init__(self, target: str) -> None:
        self.target = target


def redirect_to_sign_in(request: Request, exc: SignInRequired) -> RedirectResponse:
    back = quote(exc.target, safe="/?=&")
    where = f"{REFRESH_PATH}?next={back}" if REFRESH_COOKIE in request.cookies else f"/login?next={back}"
    return RedirectResponse(where, status.HTTP_303_SEE_OTHER)


def console_principal(
    request: Request,
    controller: ControllerDep,
    token: Annotated[str | None, Depends(bearer_scheme)],
    key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    """The principal of a console page (signed in by the cookie, or by a token or key as for the
    API), or SignInRequired."""
    if ACCESS_COOKIE not in request.cookies and token is None and key is None:
        raise SignInRequired(_here(request))
    try:
        return current_principal(request, controller, token, key)
    except HTTPException as exc:
        if exc.status_code == status.HTTP_401_UNAUTHORIZED:
            raise SignInRequired(_here(request)) from None
        raise


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never an absolute URL someone put in a link."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _signed_in(
    controller: Controller, request: Request, account: Account, refresh: str, target: str
) -> Response:
    settings = controller.settings
    response = RedirectResponse(_safe_next(target), status.HTTP_303_SEE_OTHER)
    secure = request.url.scheme == "https"
    ttl = settings.access_token_ttl_s
    token = access_token(controller.signing_key, account, now_utc(), timedelta(seconds=ttl))
    response.set_cookie(
        ACCESS_COOKIE, token, max_age=ttl, httponly=True, samesite="strict", secure=secure, path="/"
    )
    response.set_cookie(
        REFRESH_COOKIE,
        refresh,
        max_age=settings.refresh_token_ttl_s,
        httponly=True,
        samesite="strict",
        secure=secure,
        path=REFRESH_PATH,
    )
    return response


@router.get("/login")
def login_page(request: Request, next: str | None = None, failed: str | None = None) -> Response:
    return render(request, "login.html", next=_safe_next(next), failed=failed)


@router.post("/login")
async def login(
    request: Request,
    controller: ControllerDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    try:
        account, refresh = await password_sign_in(controller, username, password, source_of(request))
    except HTTPException as exc:
        words = labels(language_of(request))
        failed = (
            words["sign_in_failed"] if exc.status_code == status.HTTP_401_UNAUTHORIZED else str(exc.detail)
        )
        return render(
            request, "login.html", next=_safe_next(next), failed=failed, status_code=exc.status_code
        )
    return _signed_in(controller, request, account, refresh, next)


@router.api_route(REFRESH_PATH, methods=["GET", "POST"])
async def refresh(request: Request, controller: ControllerDep, next: str | None = None) -> Response:
    """New cookies for the refresh cookie; back to `next` (a page), or 204 for a script."""
    token = request.cookies.get(REFRESH_COOKIE)
    target = _safe_next(next)
    if token is None:
        return RedirectResponse(f"/login?next={quote(target)}", status.HTTP_303_SEE_OTHER)
    try:
        account, new = await spend_refresh_token(controller, token)
    except HTTPException:
        response = RedirectResponse(f"/login?next={quote(target)}", status.HTTP_303_SEE_OTHER)
        response.delete_cookie(REFRESH_COOKIE, path=REFRESH_PATH)
        return response
    signed_in = _signed_in(controller, request, account, new, target)
    if request.method == "POST":
        signed_in.status_code = status.HTTP_204_NO_CONTENT
        del signed_in.headers["location"]
    return signed_in


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(ACCESS_COOKIE, path="/")
    response.delete_cookie(REFRESH_COOKIE, path=REFRESH_PATH)
    return response


@router.get("/language/{language}")
def choose_language(language: str, request: Request) -> Response:
    back = request.headers.get("referer", "/")
    response = RedirectResponse(
        back if back.startswith(str(request.base_url)) else "/", status.HTTP_303_SEE_OTHER
    )
    if language in LANGUAGES:
        response.set_cookie(LANGUAGE_COOKIE, language, max_age=365 * 86400, samesite="lax")
    return response
