"""Accounts, sign-in, refresh, API keys, the first administrator from the command line, and the
limits on guessing and flooding: through real HTTP, and the real `cunxiang` command."""

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from controller.accounts import Role
from controller.audit import AuditRecord
from controller.embedded_broker import EmbeddedBroker
from controller.models import Account
from tests.conftest import make_settings
from tests.live import LiveServer, http_client

TOKEN = "/api/v1/auth/token"


@pytest.fixture
async def live(database_url: str, embedded_broker: EmbeddedBroker) -> AsyncIterator[LiveServer]:
    settings = make_settings(
        database_url,
        embedded_broker.url,
        login_failures_max=3,
        broadcasts_per_minute=2,
        max_request_bytes=4096,
    )
    async with LiveServer(settings) as server:
        yield server


def anonymous(live: LiveServer) -> httpx.AsyncClient:
    return http_client(live.http.base_url)


async def test_sign_in_refresh_and_who_am_i(live: LiveServer) -> None:
    client = await live.account("wang", Role.OPERATOR, "421202100")
    me = (await client.get("/api/v1/auth/me")).json()
    assert me == {
        "name": "wang",
        "kind": "account",
        "role": "operator",
        "region": "421202100",
        "region_name": "汀泗桥镇",
    }
    async with anonymous(live) as nobody:
        assert (await nobody.get("/api/v1/auth/me")).status_code == 401
        assert (
            await nobody.get("/api/v1/auth/me", headers={"Authorization": "Bearer x.y.z"})
        ).status_code == 401
        first = live.refresh_tokens["wang"]
        renewed = await nobody.post("/api/v1/auth/refresh", json={"refresh_token": first})
        assert renewed.status_code == 200, renewed.text
        second = renewed.json()["refresh_token"]
        fresh = {"Authorization": f"Bearer {renewed.json()['access_token']}"}
        assert (await nobody.get("/api/v1/auth/me", headers=fresh)).json()["name"] == "wang"
        # The first token again: it was copied. Its whole family is revoked, the second one too.
        replayed = await nobody.post("/api/v1/auth/refresh", json={"refresh_token": first})
        assert replayed.status_code == 401 and "already used" in replayed.json()["detail"]
        assert (await nobody.post("/api/v1/auth/refresh", json={"refresh_token": second})).status_code == 401


async def test_wrong_passwords_are_refused_alike_and_then_rate_limited(live: LiveServer) -> None:
    await live.account("wang", Role.OPERATOR)
    async with anonymous(live) as nobody:
        for username in ("wang", "nobody-by-that-name", "wang", "wang"):
            answer = await nobody.post(TOKEN, data={"username": username, "password": "wrong-password-1"})
            assert answer.status_code == 401
            assert answer.json()["detail"] == "wrong username or password (or the account is disabled)"
        # Three failures for wang within the window: even the right password waits now.
        limited = await nobody.post(TOKEN, data={"username": "wang", "password": "password-wang"})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "900"
    with Session(live.controller.engine) as session:
        denied = session.exec(
            select(AuditRecord).where(AuditRecord.action == "auth.login", AuditRecord.outcome == "denied")
        ).all()
    assert sorted(r.actor for r in denied) == ["nobody-by-that-name", "wang", "wang", "wang"]
    assert all(r.source == "127.0.0.1" for r in denied)


async def test_disabling_an_account_or_changing_its_password_ends_its_sessions(live: LiveServer) -> None:
    admin = await live.account("boss", Role.ADMIN)
    wang = await live.account("wang", Role.OPERATOR, "421202100")
    changed = await wang.post(
        "/api/v1/auth/password",
        json={"current_password": "password-wang", "new_password": "a-new-long-secret"},
    )
    assert changed.status_code == 204, changed.text
    assert (await wang.get("/api/v1/auth/me")).status_code == 401  # its token predates the change
    async with anonymous(live) as nobody:
        again = await nobody.post(TOKEN, data={"username": "wang", "password": "a-new-long-secret"})
        assert again.status_code == 200
        wang.headers["Authorization"] = f"Bearer {again.json()['access_token']}"
        assert (await wang.get("/api/v1/auth/me")).status_code == 200
        disabled = await admin.patch("/api/v1/accounts/wang", json={"disabled": True})
        assert disabled.status_code == 200 and disabled.json()["disabled_at"] is not None
        assert (await wang.get("/api/v1/auth/me")).status_code == 401
        refused = await nobody.post(TOKEN, data={"username": "wang", "password": "a-new-long-secret"})
        assert refused.status_code == 401
    own = await admin.patch("/api/v1/accounts/boss", json={"role": "operator"})
    assert own.status_code == 422 and "your own" in own.text


async def test_admins_manage_accounts_and_keys_only_within_their_region(live: LiveServer) -> None:
    township_admin = await live.account("tadmin", Role.ADMIN, "421202100")
    made = await township_admin.post(
        "/api/v1/accounts",
        json={
            "username": "cunguan",
            "role": "operator",
            "region": "421202100001",
            "password": "village-secret",
        },
    )
    assert made.status_code == 201, made.text
    elsewhere = await township_admin.post(
        "/api/v1/accounts",
        json={"username": "other", "role": "operator", "region": "421202101", "password": "village-secret"},
    )
    assert elsewhere.status_code == 403
    weak = await township_admin.post(
        "/api/v1/accounts",
        json={"username": "weak", "role": "operator", "region": "421202100", "password": "aaaaaaaaaaaa"},
    )
    assert weak.status_code == 422
    taken = await township_admin.post(
        "/api/v1/accounts",
        json={"username": "cunguan", "role": "viewer", "region": "421202100", "password": "village-secret"},
    )
    assert taken.status_code == 422 and "taken" in taken.text
    names = [a["username"] for a in (await township_admin.get("/api/v1/accounts")).json()]
    assert names == ["cunguan", "tadmin"]

    issued = await township_admin.post(
        "/api/v1/api-keys", json={"name": "water-bureau", "role": "operator", "region": "421202100"}
    )
    assert issued.status_code == 201
    key = issued.json()["key"]
    async with anonymous(live) as machine:
        assert (await machine.get("/api/v1/auth/me", headers={"X-API-Key": key})).json()[
            "name"
        ] == "key:water-bureau"
        as_bearer = await machine.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {key}"})
        assert as_bearer.json()["role"] == "operator"
        assert (await township_admin.delete("/api/v1/api-keys/water-bureau")).status_code == 204
        assert (await machine.get("/api/v1/auth/me", headers={"X-API-Key": key})).status_code == 401
        assert (
            await machine.get("/api/v1/auth/me", headers={"X-API-Key": key[:-1] + "x"})
        ).status_code == 401
    with Session(live.controller.engine) as session:
        stored = session.exec(select(Account).where(Account.username == "cunguan")).one()
    assert stored.password_hash.startswith("$argon2id$") and "village-secret" not in stored.password_hash


async def test_broadcasts_per_account_are_limited_and_big_bodies_refused(live: LiveServer) -> None:
    client = await live.account("wang", Role.OPERATOR, "421202100")
    body = {"kind": "notice", "regions": ["421202100"], "text": "通知", "expires_in": 60}
    for _ in range(2):
        assert (await client.post("/api/v1/broadcasts", json=body)).status_code == 201
    flooded = await client.post("/api/v1/broadcasts", json=body)
    assert flooded.status_code == 429 and "in the last minute" in flooded.text
    # Another account is not held back by wang's.
    assert (await live.http.post("/api/v1/broadcasts", json=body)).status_code == 201

    huge = await client.post("/api/v1/broadcasts", json=body | {"text": "汛" * 5000})
    assert huge.status_code == 413 and "4096-byte limit" in huge.text

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000  # no Content-Length: the limit is counted as the body arrives

    streamed = await client.post(
        "/api/v1/broadcasts", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_the_first_admin_is_made_on_the_command_line_with_a_password_from_stdin(tmp_path: Path) -> None:
    env = {"CUNXIANG_DATABASE_URL": f"sqlite:///{tmp_path / 'cx.db'}", "PATH": "/usr/bin:/bin"}

    def admin(*args: str, password: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "deploy.cli", "admin", "create", *args]
        return subprocess.run(command, input=password, env=env, capture_output=True, text=True, timeout=60)

    made = admin(
        "--username",
        "root",
        "--region",
        "421202",
        "--role",
        "admin",
        "--password-stdin",
        password="s3cret-county\n",
    )
    assert made.returncode == 0, made.stderr
    assert "account root (admin, region 421202) created" in made.stdout
    weak = admin("--username", "weak", "--region", "421202", password="short\n")
    assert weak.returncode == 2 and "password" in weak.stderr
    nowhere = admin("--username", "xu", "--region", "999999", password="long-enough-pass\n")
    assert nowhere.returncode == 2 and "unknown region code 999999" in nowhere.stderr
    again = admin("--username", "root", "--region", "421202", password="another-long-pass\n")
    assert again.returncode == 2 and "taken" in again.stderr
    verify = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "audit", "verify"], env=env, capture_output=True, text=True
    )
    assert verify.returncode == 0 and "1 records" in verify.stdout
