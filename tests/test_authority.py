"""Authority by region and role: every route, asked by every role in every region, answers as its rule says.

The callers: the four roles (viewer < operator < approver < admin) in each of four regions, the
county 咸安区, township A 汀泗桥镇, its neighbour township B 向阳湖镇, and village A 汀泗桥社区 in A, as
API keys (they act exactly as accounts do, without a password hash per caller); three accounts
signed in through the token flow, to show tokens get the same answers; and callers with no
credentials, a garbage bearer token and a garbage API key.

`CASES` is the table: per route (and a few variants of one), the least role it needs and the region
its object lies in, written from the requirement, not read off the code. Each case builds a valid
request per caller, aimed at an object in township A (fresh where the request changes it), so an
allowed caller must get the success status, not merely something other than 403.
A route added without a row fails `test_every_route_has_a_row_in_the_table`.

SQLite only, with one server for the module: the rules do not depend on the database, and one
server keeps the walk well under a minute.
"""

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlmodel import Session, select

from api.app import create_app
from controller.accounts import NewAccount, Role, create_account, hash_password
from controller.embedded_broker import EmbeddedBroker
from controller.models import Account
from controller.tokens import issue_refresh_token
from devices.messages import Heartbeat, Speaker, encode, now_utc
from tests.builders import tone
from tests.cap_builders import area_xml, cap_xml, info_xml
from tests.conftest import make_settings
from tests.live import LiveServer, eventually, http_client, specs_in

COUNTY = "421202"  # 咸安区
A = "421202100"  # 汀泗桥镇
B = "421202101"  # 向阳湖镇, A's neighbour
VA = "421202100001"  # 汀泗桥社区, a village of A
VB = "421202101001"  # 甘棠社区, a village of B
PLACES = {"county": COUNTY, "a": A, "b": B, "va": VA}

# One event loop for the module, so one server serves every test in it.
module_loop = pytest.mark.asyncio(loop_scope="module")


# --- callers ------------------------------------------------------------------------------------------


@dataclass
class Caller:
    """Who makes a request: its role and region (None for no or bad credentials) and its headers.
    An account's token and password change when the password route succeeds for it."""

    name: str
    role: Role | None
    region: str | None
    kind: str
    """`api_key`, `account`, or `nobody` (no valid credentials)"""
    headers: dict[str, str]
    password: str | None = None

    def covers(self, code: str) -> bool:
        return self.region is not None and code.startswith(self.region)


# --- the table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Who may: at least `least` (None: anyone, no credentials needed), within `region`."""

    least: Role | None
    region: str | None = None
    """the region the object lies in: a caller must cover it (None: no region is involved)"""
    reach: bool = False
    """a caller within `region` may too: the object reaches into theirs (a broadcast or schedule that
    plays on their loudspeakers)"""
    others: Role | None = None
    """the object was made by someone else (the seeding administrator): changing it needs this role"""
    accounts_only: bool = False
    """only an account may (an API key has no password)"""
    keys_only: bool = False
    """only an API key may (a warning system; people use the console)"""


PUBLIC = Rule(None)


@dataclass(frozen=True)
class Call:
    """One request: its URL and httpx keyword arguments (json, params, data, files, content)."""

    url: str
    args: dict[str, Any] = field(default_factory=dict)


Make = Callable[["World", Caller], Awaitable[Call]]


@dataclass(frozen=True)
class Case:
    method: str
    route: str
    rule: Rule
    make: Make
    ok: int = 200
    variant: str = ""
    stream: bool = False
    nobody: int = 401
    """the answer without valid credentials: 401, or for a console page a redirect to sign in"""

    @property
    def id(self) -> str:
        return f"{self.method} {self.route}" + (f" [{self.variant}]" if self.variant else "")


def expected(case: Case, caller: Caller) -> int:
    """The answer the rule gives this caller."""
    rule = case.rule
    if rule.least is None:
        return case.ok
    if caller.role is None or caller.region is None:
        return case.nobody
    if not caller.role.at_least(rule.least):
        return 403
    if rule.accounts_only and caller.kind != "account":
        return 403
    if rule.keys_only and caller.kind != "api_key":
        return 403
    if rule.region is not None and not (
        caller.covers(rule.region) or (rule.reach and caller.region.startswith(rule.region))
    ):
        return 403
    if rule.others is not None and not caller.role.at_least(rule.others):
        return 403
    return case.ok


# --- the world: a server, callers, and objects in A and B ----------------------------------------------


@dataclass
class World:
    live: LiveServer
    http: httpx.AsyncClient
    """a client with no credentials of its own: each request carries its caller's"""
    callers: list[Caller]
    ids: dict[str, str]
    """the seeded objects: broadcast_a, terminal_a, group_a, schedule_a, alarm_a... and their B twins"""
    counter: "itertools.count[int]" = field(default_factory=itertools.count)
    password_hash: str = ""
    requests: int = 0

    def fresh(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter)}"

    def caller(self, name: str) -> Caller:
        return next(c for c in self.callers if c.name == name)

    async def seed(self, method: str, url: str, status: int = 200, **args: Any) -> Any:
        """A request as the seeding administrator (the county admin key of `live.http`)."""
        response = await self.live.http.request(method, url, **args)
        assert response.status_code == status, f"{method} {url}: {response.status_code} {response.text}"
        return response.json() if response.content else None


def notice(region: str = A, **extra: Any) -> dict[str, Any]:
    """A notice: never held for approval or confirmation, so a send succeeds at once."""
    return {
        "kind": "notice",
        "regions": [region],
        "issuer_region": region,
        "text": "明早停水通知",
        "expires_in": 600,
    } | extra


def alert(region: str = A) -> dict[str, Any]:
    """A live level I alert from an API key: held for a second person's approval."""
    return notice(region, kind="emergency", level=1, text="汀泗河洪水红色预警")


def schedule_body(programme: str, **target: Any) -> dict[str, Any]:
    # Far in the future: nothing ever plays, and it conflicts with nothing.
    return {"name": "早间广播", "programme_id": programme, "start": "2030-06-01T06:30"} | target


async def _sign_in(http: httpx.AsyncClient, username: str, password: str) -> str:
    answer = await http.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


async def _callers(live: LiveServer) -> list[Caller]:
    async def key_caller(role: Role, place: str) -> Caller:
        name = f"{role.value}-{place}"
        key = await live.api_key(name, role, PLACES[place])
        return Caller(name, role, PLACES[place], "api_key", {"X-API-Key": key})

    async def account_caller(role: Role, place: str) -> Caller:
        name = f"tok-{role.value}-{place}"
        client = await live.account(name, role, PLACES[place])
        headers = {"Authorization": client.headers["Authorization"]}
        return Caller(name, role, PLACES[place], "account", headers, password=f"password-{name}")

    keys = [key_caller(role, place) for role in Role for place in PLACES]
    accounts = [
        account_caller(Role.OPERATOR, "a"),
        account_caller(Role.VIEWER, "b"),
        account_caller(Role.APPROVER, "county"),
    ]
    made = await asyncio.gather(*keys, *accounts)
    return [
        *made,
        Caller("no-credentials", None, None, "nobody", {}),
        Caller("garbage-token", None, None, "nobody", {"Authorization": "Bearer not.a.token"}),
        Caller("garbage-key", None, None, "nobody", {"X-API-Key": "cxk_0000_nope"}),
    ]


async def _raise_alarm(world: World, terminal: str) -> str:
    live = world.live
    bus = live.controller.bus
    assert bus is not None
    beat = Heartbeat(terminal_id=terminal, at=datetime.now(UTC), speaker=Speaker.OPEN_CIRCUIT)
    async with aiomqtt.Client(bus.address.host, bus.address.port, identifier=f"dev-{terminal}") as client:
        await client.publish(live.topics.terminal_heartbeat(terminal), encode(beat), qos=1)
    found: list[str] = []

    async def raised() -> bool:
        alarms = await world.seed("GET", "/api/v1/alarms", params={"terminal": terminal})
        found[:] = [alarm["id"] for alarm in alarms]
        return bool(found)

    await eventually(raised)
    return found[0]


async def _seed(world: World) -> None:
    ids = world.ids
    specs = specs_in([VA, VB])
    await world.live.register(specs)
    ids["terminal_a"], ids["terminal_b"] = (s.terminal_id for s in specs)
    for place, region in (("a", A), ("b", B)):
        ids[f"group_{place}"] = f"group-{place}"
        await world.seed(
            "PUT", f"/api/v1/groups/group-{place}", 201, json={"name": "沿河", "regions": [region]}
        )
    ids["group_a_terminals"] = "group-a-terminals"
    await world.seed(
        "PUT",
        "/api/v1/groups/group-a-terminals",
        201,
        json={"name": "汀泗桥镇喇叭", "terminals": [ids["terminal_a"]]},
    )
    programme = await world.seed("POST", "/api/v1/programmes", 201, json={"title": "天气", "text": "今天晴"})
    ids["programme"] = programme["id"]
    uploaded = await world.seed(
        "POST", "/api/v1/programmes/upload", 201, data={"title": "提示音"}, files={"file": ("t.wav", tone())}
    )
    ids["media"] = uploaded["media"]
    for place, region in (("a", A), ("b", B)):
        body = schedule_body(ids["programme"], regions=[region])
        ids[f"schedule_{place}"] = (await world.seed("POST", "/api/v1/schedules", 201, json=body))["id"]
        ids[f"broadcast_{place}"] = (await world.live.send(**notice(region)))["id"]
        ids[f"alarm_{place}"] = await _raise_alarm(world, ids[f"terminal_{place}"])
    body = schedule_body(ids["programme"], groups=[ids["group_a"]])
    ids["schedule_a_group"] = (await world.seed("POST", "/api/v1/schedules", 201, json=body))["id"]
    body = schedule_body(ids["programme"], groups=[ids["group_a_terminals"]])
    ids["schedule_a_terminals"] = (await world.seed("POST", "/api/v1/schedules", 201, json=body))["id"]
    for place, region in (("a", A), ("b", B)):
        ids[f"account_{place}"] = f"acct-{place}"
        await world.seed(
            "POST",
            "/api/v1/accounts",
            201,
            json={
                "username": f"acct-{place}",
                "role": "viewer",
                "region": region,
                "password": "secret-pw-123",
            },
        )
        ids[f"key_{place}"] = f"key-{place}"
        await world.live.api_key(f"key-{place}", Role.VIEWER, region)
    station = await world.live.api_key("station-a", Role.OPERATOR, A)
    received = await world.seed(
        "POST", "/api/v1/cap", 201, content=cap_notice(world), headers={"X-API-Key": station}
    )
    ids["cap_a"] = str(received["message_id"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    embedded_broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    database = tmp_path_factory.mktemp("authority") / "cunxiang.db"
    # The two-person rule on, so approve and reject have something awaiting approval.
    # Every caller here signs in from 127.0.0.1, some of them wrongly on purpose: the limit on failed
    # sign-ins per address (tests/test_sign_in.py) would otherwise answer 429 partway through.
    settings = make_settings(
        f"sqlite:///{database}",
        embedded_broker.url,
        approval_levels=[1, 2],
        login_failures_per_source=100_000,
        login_failures_max=1000,
    )
    async with (
        LiveServer(settings) as live,
        http_client(live.http.base_url) as http,
    ):
        world = World(live, http, await _callers(live), {})
        world.password_hash = await asyncio.to_thread(hash_password, "secret-pw-123")
        await _seed(world)
        yield world


# --- fresh objects, one per caller where the request changes it ----------------------------------------


async def fresh_broadcast(world: World, body: dict[str, Any] | None = None) -> str:
    accepted = await world.seed("POST", "/api/v1/broadcasts", 201, json=body or notice())
    broadcast_id: str = accepted["id"]
    return broadcast_id


async def fresh_held(world: World) -> str:
    accepted = await world.seed("POST", "/api/v1/broadcasts", 201, json=alert())
    assert accepted["state"] == "awaiting_approval", accepted
    broadcast_id: str = accepted["id"]
    return broadcast_id


async def fresh_terminal(world: World) -> str:
    terminal = world.fresh("auth-t")
    await world.seed("POST", "/api/v1/terminals", json=[{"id": terminal, "region": VA}])
    return terminal


async def fresh_group(world: World, **spec: Any) -> str:
    group = world.fresh("auth-g")
    await world.seed(
        "PUT", f"/api/v1/groups/{group}", 201, json={"name": "临时"} | (spec or {"regions": [A]})
    )
    return group


async def fresh_schedule(world: World, **target: Any) -> str:
    body = schedule_body(world.ids["programme"], **(target or {"regions": [A]}))
    schedule: str = (await world.seed("POST", "/api/v1/schedules", 201, json=body))["id"]
    return schedule


async def fresh_account(world: World) -> str:
    username = world.fresh("acct")
    new = NewAccount(username=username, role=Role.VIEWER, region=A, password="secret-pw-123")

    def store(session: Session) -> None:
        create_account(session, new, world.password_hash, "tests", now_utc())
        session.commit()

    await world.live.controller.writer.call(store)
    return username


async def fresh_refresh_token(world: World) -> str:
    """A refresh token of `acct-a`, straight from the store (signing in costs a password hash)."""

    def issue(session: Session) -> str:
        account = session.exec(select(Account).where(Account.username == "acct-a")).one()
        token = issue_refresh_token(session, account, now_utc(), timedelta(hours=1))
        session.commit()
        return token

    return await world.live.controller.writer.call(issue)


def own_region(caller: Caller) -> str:
    """A target that is the caller's own: a request refused must be refused for the object, not the body."""
    return caller.region or A


# --- how each route is asked ---------------------------------------------------------------------------


def at(url: str, **args: Any) -> Make:
    """The same request for every caller; `{name}` in the URL is filled from the seeded ids."""

    async def make(world: World, _caller: Caller) -> Call:
        return Call(url.format(**world.ids), args)

    return make


async def sign_in(world: World, _caller: Caller) -> Call:
    return Call("/api/v1/auth/token", {"data": {"username": "acct-a", "password": "secret-pw-123"}})


async def refresh(world: World, _caller: Caller) -> Call:
    return Call("/api/v1/auth/refresh", {"json": {"refresh_token": await fresh_refresh_token(world)}})


async def change_password(world: World, caller: Caller) -> Call:
    body = {"current_password": caller.password or "secret-pw-123", "new_password": world.fresh("new-pw-x")}
    return Call("/api/v1/auth/password", {"json": body})


async def new_account(world: World, _caller: Caller) -> Call:
    body = {"username": world.fresh("new"), "role": "viewer", "region": A, "password": "secret-pw-123"}
    return Call("/api/v1/accounts", {"json": body})


async def patch_account(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/accounts/{await fresh_account(world)}", {"json": {"role": "operator"}})


async def new_api_key(world: World, _caller: Caller) -> Call:
    return Call("/api/v1/api-keys", {"json": {"name": world.fresh("k"), "role": "viewer", "region": A}})


async def revoke_api_key(world: World, _caller: Caller) -> Call:
    name = world.fresh("k")
    await world.live.api_key(name, Role.VIEWER, A)
    return Call(f"/api/v1/api-keys/{name}")


def to_terminal_a(world: World) -> dict[str, Any]:
    """The issuer is the caller's region: one outside A must be refused for the target."""
    return notice(regions=[], issuer_region=None, terminals=[world.ids["terminal_a"]])


async def preview_terminal_a(world: World, _caller: Caller) -> Call:
    return Call("/api/v1/broadcasts/preview", {"json": to_terminal_a(world)})


async def send_to_terminal_a(world: World, _caller: Caller) -> Call:
    return Call("/api/v1/broadcasts", {"json": to_terminal_a(world)})


async def update_broadcast(world: World, _caller: Caller) -> Call:
    return Call(
        f"/api/v1/broadcasts/{await fresh_broadcast(world)}/update", {"json": notice(text="改为后天停水")}
    )


async def cancel_broadcast(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/broadcasts/{await fresh_broadcast(world)}/cancel")


async def false_alarm(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/broadcasts/{await fresh_broadcast(world)}/false-alarm")


async def approve(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/broadcasts/{await fresh_held(world)}/approve")


async def reject(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/broadcasts/{await fresh_held(world)}/reject", {"json": {"reason": "核实中"}})


async def register_terminal(world: World, _caller: Caller) -> Call:
    return Call("/api/v1/terminals", {"json": [{"id": world.fresh("auth-t"), "region": VA}]})


async def import_terminals(world: World, _caller: Caller) -> Call:
    csv = f"id,region,name\n{world.fresh('auth-t')},{VA},村口\n"
    return Call("/api/v1/terminals/import", {"content": csv, "headers": {"Content-Type": "text/csv"}})


async def decommission(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/terminals/{await fresh_terminal(world)}")


async def put_group(world: World, caller: Caller) -> Call:
    group = await fresh_group(world)
    return Call(f"/api/v1/groups/{group}", {"json": {"name": "改名", "regions": [own_region(caller)]}})


async def delete_group(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/groups/{await fresh_group(world)}")


async def delete_terminals_group(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/groups/{await fresh_group(world, terminals=[world.ids['terminal_a']])}")


async def new_schedule(world: World, _caller: Caller) -> Call:
    return Call("/api/v1/schedules", {"json": schedule_body(world.ids["programme"], regions=[A])})


async def new_schedule_of_terminals_group(world: World, _caller: Caller) -> Call:
    body = schedule_body(world.ids["programme"], groups=[world.ids["group_a_terminals"]])
    return Call("/api/v1/schedules", {"json": body})


async def put_schedule(world: World, caller: Caller) -> Call:
    body = schedule_body(world.ids["programme"], regions=[own_region(caller)])
    return Call(f"/api/v1/schedules/{await fresh_schedule(world)}", {"json": body})


async def put_group_schedule(world: World, caller: Caller) -> Call:
    body = schedule_body(world.ids["programme"], regions=[own_region(caller)])
    schedule = await fresh_schedule(world, groups=[world.ids["group_a"]])
    return Call(f"/api/v1/schedules/{schedule}", {"json": body})


async def delete_schedule(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/schedules/{await fresh_schedule(world)}")


async def delete_group_schedule(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/schedules/{await fresh_schedule(world, groups=[world.ids['group_a']])}")


async def upload(world: World, _caller: Caller) -> Call:
    return Call(
        "/api/v1/programmes/upload", {"data": {"title": "提示音"}, "files": {"file": ("t.wav", tone())}}
    )


def cap_notice(world: World) -> bytes:
    """A CAP notice for the whole county, which each key's region clips to its own."""
    soon = (now_utc() + timedelta(hours=1)).isoformat(timespec="seconds")
    info = info_xml(
        urgency="Future",
        severity="Minor",
        expires=soon,
        areas=(area_xml(geocodes=(("China-admin", COUNTY),)),),
    )
    return cap_xml(info, identifier=world.fresh("XN-auth"), sent=now_utc().isoformat(timespec="seconds"))


async def post_cap(world: World, _caller: Caller) -> Call:
    return Call(
        "/api/v1/cap", {"content": cap_notice(world), "headers": {"Content-Type": "application/cap+xml"}}
    )


async def credentials(world: World, _caller: Caller) -> Call:
    return Call(f"/api/v1/terminals/{await fresh_terminal(world)}/credentials")


VIEWER, OPERATOR, APPROVER, ADMIN = Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMIN
# Without an engine installed, the speech route answers 503 to whoever may use it.
SPEECH = 200 if shutil.which("espeak-ng") else 503
CALENDAR = {"params": {"from": "2030-06-01T00:00", "to": "2030-06-08T00:00", "region": A}}

CASES: list[Case] = [
    # Public: signing in, the terminals' media, monitoring, the documentation.
    Case("POST", "/api/v1/auth/token", PUBLIC, sign_in),
    Case("POST", "/api/v1/auth/refresh", PUBLIC, refresh),
    Case("GET", "/healthz", PUBLIC, at("/healthz")),
    Case("GET", "/metrics", PUBLIC, at("/metrics")),
    Case("GET", "/media/{name}", PUBLIC, at("/media/{media}")),
    Case("GET", "/docs", PUBLIC, at("/docs")),
    Case("GET", "/docs/oauth2-redirect", PUBLIC, at("/docs/oauth2-redirect")),
    Case("GET", "/redoc", PUBLIC, at("/redoc")),
    Case("GET", "/openapi.json", PUBLIC, at("/openapi.json")),
    # Oneself.
    Case("GET", "/api/v1/auth/me", Rule(VIEWER), at("/api/v1/auth/me")),
    Case("POST", "/api/v1/auth/password", Rule(VIEWER, accounts_only=True), change_password, 204),
    # Accounts and keys: administrators, over accounts and keys of their region.
    Case("POST", "/api/v1/accounts", Rule(ADMIN, A), new_account, 201),
    Case("GET", "/api/v1/accounts", Rule(ADMIN), at("/api/v1/accounts")),
    # an account outside the caller's region answers 404, not 403.
    Case("GET", "/api/v1/accounts/{username}", Rule(ADMIN, A), at("/api/v1/accounts/{account_a}")),
    Case("PATCH", "/api/v1/accounts/{username}", Rule(ADMIN, A), patch_account),
    Case("POST", "/api/v1/api-keys", Rule(ADMIN, A), new_api_key, 201),
    Case("GET", "/api/v1/api-keys", Rule(ADMIN), at("/api/v1/api-keys")),
    # so does an API key outside it.
    Case("DELETE", "/api/v1/api-keys/{name}", Rule(ADMIN, A), revoke_api_key, 204),
    # The audit trail: approvers read it (filtered to their region); administrators verify it.
    Case("GET", "/api/v1/audit", Rule(APPROVER), at("/api/v1/audit")),
    Case("GET", "/api/v1/audit/verify", Rule(ADMIN), at("/api/v1/audit/verify")),
    # Broadcasts: operators send within their region; changing another's needs an approver over it;
    # anyone whose loudspeakers it reaches may follow it.
    Case(
        "POST",
        "/api/v1/broadcasts/preview",
        Rule(OPERATOR, A),
        at("/api/v1/broadcasts/preview", json=notice()),
    ),
    Case("POST", "/api/v1/broadcasts", Rule(OPERATOR, A), at("/api/v1/broadcasts", json=notice()), 201),
    # a target of single terminals outside the caller's region answers 422, not 403.
    Case(
        "POST",
        "/api/v1/broadcasts/preview",
        Rule(OPERATOR, VA),
        preview_terminal_a,
        variant="a terminal of A, issuer not named",
    ),
    # the same when sending it.
    Case(
        "POST",
        "/api/v1/broadcasts",
        Rule(OPERATOR, VA),
        send_to_terminal_a,
        201,
        variant="a terminal of A, issuer not named",
    ),
    Case(
        "POST",
        "/api/v1/broadcasts/{broadcast_id}/update",
        Rule(OPERATOR, A, others=APPROVER),
        update_broadcast,
        201,
    ),
    Case(
        "POST",
        "/api/v1/broadcasts/{broadcast_id}/cancel",
        Rule(OPERATOR, A, others=APPROVER),
        cancel_broadcast,
        202,
    ),
    Case(
        "POST",
        "/api/v1/broadcasts/{broadcast_id}/false-alarm",
        Rule(OPERATOR, A, others=APPROVER),
        false_alarm,
        201,
    ),
    Case("POST", "/api/v1/broadcasts/{broadcast_id}/approve", Rule(APPROVER, A), approve),
    Case("POST", "/api/v1/broadcasts/{broadcast_id}/reject", Rule(APPROVER, A), reject),
    Case("GET", "/api/v1/broadcasts", Rule(VIEWER), at("/api/v1/broadcasts")),
    Case(
        "GET",
        "/api/v1/broadcasts/{broadcast_id}",
        Rule(VIEWER, A, reach=True),
        at("/api/v1/broadcasts/{broadcast_a}"),
    ),
    Case(
        "GET",
        "/api/v1/broadcasts/{broadcast_id}/events",
        Rule(VIEWER, A, reach=True),
        at("/api/v1/broadcasts/{broadcast_a}/events"),
        stream=True,
    ),
    # Broadcasts as CAP: to whoever may follow the broadcast; the feed holds those that concern them.
    Case(
        "GET",
        "/api/v1/broadcasts/{broadcast_id}/cap",
        Rule(VIEWER, A, reach=True),
        at("/api/v1/broadcasts/{broadcast_a}/cap"),
    ),
    Case("GET", "/api/v1/cap/feed", Rule(VIEWER), at("/api/v1/cap/feed")),
    # Terminals: administrators register and retire them within their region; viewers see them.
    Case("GET", "/api/v1/terminals", Rule(VIEWER, A), at("/api/v1/terminals", params={"region": A})),
    Case("POST", "/api/v1/terminals", Rule(ADMIN, VA), register_terminal),
    Case("POST", "/api/v1/terminals/import", Rule(ADMIN, VA), import_terminals),
    Case("GET", "/api/v1/terminals/unregistered", Rule(ADMIN), at("/api/v1/terminals/unregistered")),
    Case("GET", "/api/v1/terminals/{terminal_id}", Rule(VIEWER, VA), at("/api/v1/terminals/{terminal_a}")),
    Case("POST", "/api/v1/terminals/{terminal_id}/credentials", Rule(ADMIN, VA), credentials),
    Case("DELETE", "/api/v1/terminals/{terminal_id}", Rule(ADMIN, VA), decommission, 204),
    # Groups: operators keep them within their region (replacing one must not take it from another).
    Case("PUT", "/api/v1/groups/{group_id}", Rule(OPERATOR, A), put_group),
    Case("GET", "/api/v1/groups", Rule(VIEWER), at("/api/v1/groups")),
    Case("GET", "/api/v1/groups/{group_id}", Rule(VIEWER, A), at("/api/v1/groups/{group_a}")),
    # a group of single terminals (no regions) is seen by anyone...
    Case(
        "GET",
        "/api/v1/groups/{group_id}",
        Rule(VIEWER, VA),
        at("/api/v1/groups/{group_a_terminals}"),
        variant="a group of terminals of A",
    ),
    Case("DELETE", "/api/v1/groups/{group_id}", Rule(OPERATOR, A), delete_group, 204),
    # ...and deleted by any operator.
    Case(
        "DELETE",
        "/api/v1/groups/{group_id}",
        Rule(OPERATOR, VA),
        delete_terminals_group,
        204,
        variant="a group of terminals of A",
    ),
    # Alarms: of terminals within the region.
    Case("GET", "/api/v1/alarms", Rule(VIEWER, A), at("/api/v1/alarms", params={"region": A})),
    Case(
        "POST",
        "/api/v1/alarms/{alarm_id}/acknowledge",
        Rule(OPERATOR, VA),
        at("/api/v1/alarms/{alarm_a}/acknowledge"),
    ),
    # Schedules: operators keep them within their region; anyone they play for sees them.
    Case("POST", "/api/v1/schedules", Rule(OPERATOR, A), new_schedule, 201),
    # ...and a schedule from any region may target it...
    Case(
        "POST",
        "/api/v1/schedules",
        Rule(OPERATOR, VA),
        new_schedule_of_terminals_group,
        201,
        variant="a group of terminals of A",
    ),
    Case("PUT", "/api/v1/schedules/{schedule_id}", Rule(OPERATOR, A), put_schedule),
    # a schedule targeting a group (no regions of its own) can be taken over...
    Case(
        "PUT",
        "/api/v1/schedules/{schedule_id}",
        Rule(OPERATOR, A),
        put_group_schedule,
        variant="one targeting a group of A",
    ),
    Case("DELETE", "/api/v1/schedules/{schedule_id}", Rule(OPERATOR, A), delete_schedule, 204),
    # ...and deleted by any operator.
    Case(
        "DELETE",
        "/api/v1/schedules/{schedule_id}",
        Rule(OPERATOR, A),
        delete_group_schedule,
        204,
        variant="one targeting a group of A",
    ),
    Case("GET", "/api/v1/schedules", Rule(VIEWER), at("/api/v1/schedules")),
    Case("GET", "/api/v1/schedules/calendar", Rule(VIEWER, A), at("/api/v1/schedules/calendar", **CALENDAR)),
    Case(
        "GET",
        "/api/v1/schedules/{schedule_id}",
        Rule(VIEWER, A, reach=True),
        at("/api/v1/schedules/{schedule_a}"),
    ),
    Case(
        "GET",
        "/api/v1/schedules/{schedule_id}",
        Rule(VIEWER, A, reach=True),
        at("/api/v1/schedules/{schedule_a_group}"),
        variant="one targeting a group of A",
    ),
    # ...while a schedule of such a group is hidden from everyone, the county too.
    Case(
        "GET",
        "/api/v1/schedules/{schedule_id}",
        Rule(VIEWER, VA, reach=True),
        at("/api/v1/schedules/{schedule_a_terminals}"),
        variant="one targeting a group of terminals of A",
    ),
    # Programmes: the county's one library.
    Case(
        "POST",
        "/api/v1/programmes",
        Rule(OPERATOR),
        at("/api/v1/programmes", json={"title": "t", "text": "你好"}),
        201,
    ),
    Case("POST", "/api/v1/programmes/upload", Rule(OPERATOR), upload, 201),
    Case("GET", "/api/v1/programmes", Rule(VIEWER), at("/api/v1/programmes")),
    Case("GET", "/api/v1/programmes/{programme_id}", Rule(VIEWER), at("/api/v1/programmes/{programme}")),
    # CAP: warning systems (API keys) post alerts, clipped to the key's region; anyone over the
    # region a message was received for, or within it, may read its record.
    Case("POST", "/api/v1/cap", Rule(OPERATOR, keys_only=True), post_cap, 201),
    Case("GET", "/api/v1/cap/messages", Rule(VIEWER), at("/api/v1/cap/messages")),
    Case(
        "GET",
        "/api/v1/cap/messages/{message_id}",
        Rule(VIEWER, A, reach=True),
        at("/api/v1/cap/messages/{cap_a}"),
    ),
    Case(
        "GET",
        "/api/v1/cap/messages/{message_id}/raw",
        Rule(VIEWER, A, reach=True),
        at("/api/v1/cap/messages/{cap_a}/raw"),
    ),
    # Regions.
    Case(
        "GET",
        "/api/v1/terminals/{terminal_id}/telemetry",
        Rule(VIEWER, VA),
        at("/api/v1/terminals/{terminal_a}/telemetry"),
    ),
    Case("GET", "/api/v1/regions/{code}", Rule(VIEWER, A), at(f"/api/v1/regions/{A}")),
    Case("GET", "/api/v1/regions/{code}/health", Rule(VIEWER, A), at(f"/api/v1/regions/{A}/health")),
    # Hearing a text before sending it.
    Case("POST", "/api/v1/speech", Rule(OPERATOR), at("/api/v1/speech", json={"text": "你好"}), SPEECH),
    # The console's pages: the same principal (the console's cookie, or a token or key); without
    # one, a redirect to sign in. Signing in and out, and the language, are for anyone.
    Case("GET", "/login", PUBLIC, at("/login")),
    Case("POST", "/login", PUBLIC, at("/login", data={"username": "nobody", "password": "x"}), 401),
    Case("POST", "/logout", PUBLIC, at("/logout"), 303),
    Case("GET", "/session/refresh", PUBLIC, at("/session/refresh"), 303),
    Case("POST", "/session/refresh", PUBLIC, at("/session/refresh"), 303),
    Case("GET", "/language/{language}", PUBLIC, at("/language/en"), 303),
    Case("GET", "/", Rule(VIEWER), at("/"), nobody=303),
    Case("GET", "/approvals", Rule(VIEWER), at("/approvals"), nobody=303),
    Case("GET", "/cap", Rule(VIEWER), at("/cap"), nobody=303),
    Case("GET", "/send", Rule(VIEWER), at("/send"), nobody=303),
    Case("GET", "/send/regions/{code}", Rule(VIEWER, A), at(f"/send/regions/{A}"), nobody=303),
    Case(
        "GET",
        "/broadcasts/{broadcast_id}",
        Rule(VIEWER, A, reach=True),
        at("/broadcasts/{broadcast_a}"),
        nobody=303,
    ),
    Case("GET", "/schedules", Rule(VIEWER, A), at("/schedules", params={"region": A}), nobody=303),
    Case("GET", "/schedules/new", Rule(VIEWER), at("/schedules/new"), nobody=303),
    Case(
        "GET",
        "/schedules/{schedule_id}/edit",
        Rule(VIEWER, A, reach=True),
        at("/schedules/{schedule_a}/edit"),
        nobody=303,
    ),
    Case("GET", "/audit", Rule(VIEWER), at("/audit"), nobody=303),
    Case("GET", "/fleet", Rule(VIEWER), at("/fleet"), nobody=303),
    Case("GET", "/fleet/{terminal_id}", Rule(VIEWER, VA), at("/fleet/{terminal_a}"), nobody=303),
    Case("GET", "/map", Rule(VIEWER), at("/map"), nobody=303),
    Case("GET", "/map/view", Rule(VIEWER), at("/map/view"), nobody=303),
]


# --- asking --------------------------------------------------------------------------------------------


async def ask(world: World, case: Case, caller: Caller) -> tuple[int, str, Call]:
    call = await case.make(world, caller)
    args = dict(call.args)
    headers = {**caller.headers, **args.pop("headers", {})}
    world.requests += 1
    if case.stream:
        async with world.http.stream(case.method, call.url, headers=headers, **args) as response:
            return response.status_code, "", call
    response = await world.http.request(case.method, call.url, headers=headers, **args)
    return response.status_code, response.text[:300], call


async def after_password_change(world: World, caller: Caller, call: Call) -> None:
    """The account's sign-ins ended: sign in again with the new password, for the cases after this one."""
    caller.password = str(call.args["json"]["new_password"])
    caller.headers["Authorization"] = f"Bearer {await _sign_in(world.http, caller.name, caller.password)}"


def routes_of(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app answers; HEAD is Starlette's automatic twin of GET."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI ≥ 0.16x nests included routers

        routes: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = list(app.routes)
    return {
        (method, route.path)
        for route in routes
        for method in (getattr(route, "methods", None) or ())
        if method != "HEAD"
    }


# --- the tests -----------------------------------------------------------------------------------------


def test_every_route_has_a_row_in_the_table(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'x.db'}", "mqtt://127.0.0.1:1"))
    routes = routes_of(app)
    table = {(case.method, case.route) for case in CASES}
    assert sorted(routes - table) == [], "routes with no rule in CASES"
    assert sorted(table - routes) == [], "rules for routes that do not exist"


@module_loop
async def test_lists_show_only_what_lies_within_the_callers_region(world: World) -> None:
    ids = world.ids

    async def listed(caller: str, url: str, key: str, **params: Any) -> set[str]:
        response = await world.http.get(url, headers=world.caller(caller).headers, params=params)
        assert response.status_code == 200, (caller, url, response.text)
        world.requests += 1
        body = response.json()
        items = body["items"] if isinstance(body, dict) else body
        return {str(item[key]) for item in items}

    lists = [
        ("/api/v1/broadcasts", "id", "broadcast", {"limit": 500}, "viewer"),
        ("/api/v1/terminals", "id", "terminal", {}, "viewer"),
        ("/api/v1/alarms", "id", "alarm", {}, "viewer"),
        ("/api/v1/groups", "id", "group", {}, "viewer"),
        ("/api/v1/schedules", "id", "schedule", {}, "viewer"),
        ("/api/v1/accounts", "username", "account", {}, "admin"),
        ("/api/v1/api-keys", "name", "key", {}, "admin"),
    ]
    problems = []
    for url, key, what, params, role in lists:
        a_ids = {v for k, v in ids.items() if k.startswith(f"{what}_a")}
        b_ids = {v for k, v in ids.items() if k.startswith(f"{what}_b")}
        seen = {place: await listed(f"{role}-{place}", url, key, **params) for place in ("county", "a", "b")}
        if not (a_ids | b_ids) <= seen["county"]:
            problems.append(f"{url}: the county's list lacks {sorted((a_ids | b_ids) - seen['county'])}")
        if not a_ids <= seen["a"] or seen["a"] & b_ids:
            problems.append(f"{url}: township A's list is {sorted(seen['a'])}")
        # B's list of groups holds A's group of terminals; A's and the county's lists of
        # schedules lack the schedule of that group.
        if not b_ids <= seen["b"] or seen["b"] & a_ids:
            problems.append(f"{url}: township B's list is {sorted(seen['b'])}")
    # The audit trail: records about A's objects are A's and the county's, never B's.
    a_objects = {ids[k] for k in ("group_a", "schedule_a", "broadcast_a", "account_a")}
    for place in ("county", "a", "b"):
        records = (await listed(f"approver-{place}", "/api/v1/audit", "object_id", limit=1000)) & a_objects
        wanted = set() if place == "b" else a_objects
        if records != wanted:
            # records of group and schedule actions carry the actor's region, not the object's.
            problems.append(
                f"/api/v1/audit: {place}'s trail holds {sorted(records)} of A's, not {sorted(wanted)}"
            )
    assert problems == [], "\n".join(problems)


@module_loop
async def test_a_sender_may_change_their_own_broadcast(world: World) -> None:
    senders = [c for c in world.callers if c.role is not None and c.role.at_least(Role.OPERATOR)]
    assert len(senders) >= 9

    async def changes(caller: Caller) -> list[str]:
        assert caller.region is not None
        body = notice(caller.region)
        wrong = []
        for action, ok, json in (("cancel", 202, None), ("update", 201, body), ("false-alarm", 201, None)):
            sent = await world.http.post("/api/v1/broadcasts", json=body, headers=caller.headers)
            assert sent.status_code == 201, (caller.name, sent.text)
            url = f"/api/v1/broadcasts/{sent.json()['id']}/{action}"
            answer = await world.http.post(url, json=json, headers=caller.headers)
            world.requests += 2
            if answer.status_code != ok:
                wrong.append(f"{caller.name} {action}: {answer.status_code} {answer.text[:200]}")
        return wrong

    assert [w for found in await asyncio.gather(*map(changes, senders)) for w in found] == []


@module_loop
async def test_an_unknown_object_is_404_for_whoever_may_ask_about_its_kind(world: World) -> None:
    admin = world.caller("admin-county").headers
    unknown = [
        ("GET", "/api/v1/accounts/nobody"),
        ("PATCH", "/api/v1/accounts/nobody"),
        ("DELETE", "/api/v1/api-keys/nokey"),
        ("GET", "/api/v1/broadcasts/20260101T000000-000000000000"),
        ("GET", "/api/v1/broadcasts/20260101T000000-000000000000/events"),
        ("POST", "/api/v1/broadcasts/20260101T000000-000000000000/cancel"),
        ("POST", "/api/v1/broadcasts/20260101T000000-000000000000/approve"),
        ("GET", "/api/v1/terminals/no-such-terminal"),
        ("DELETE", "/api/v1/terminals/no-such-terminal"),
        ("GET", "/api/v1/groups/no-such-group"),
        ("DELETE", "/api/v1/groups/no-such-group"),
        ("POST", "/api/v1/alarms/no-such-alarm/acknowledge"),
        ("GET", "/api/v1/schedules/s0000000000000000"),
        ("DELETE", "/api/v1/schedules/s0000000000000000"),
        ("GET", "/api/v1/programmes/p0000000000000000"),
        ("GET", "/api/v1/regions/421202999"),
        ("GET", "/media/" + "0" * 64 + ".wav"),
    ]
    body = {"role": "viewer"}
    answers = await asyncio.gather(
        *(
            world.http.request(m, url, headers=admin, json=body if m == "PATCH" else None)
            for m, url in unknown
        )
    )
    world.requests += len(unknown)
    assert [
        (m, u, a.status_code) for (m, u), a in zip(unknown, answers, strict=True) if a.status_code != 404
    ] == []


@module_loop
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_the_route_answers_each_caller_as_its_rule_says(world: World, case: Case) -> None:
    answers = await asyncio.gather(*(ask(world, case, caller) for caller in world.callers))
    wrong = []
    for caller, (status, text, call) in zip(world.callers, answers, strict=True):
        if status != expected(case, caller):
            wrong.append(f"{caller.name}: expected {expected(case, caller)}, got {status} {text}")
        if case.make is change_password and status == 204:
            await after_password_change(world, caller, call)
    assert wrong == [], f"{case.id}:\n" + "\n".join(wrong)
