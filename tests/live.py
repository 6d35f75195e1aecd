"""A live Cunxiang server inside the test's event loop, spoken to over real HTTP."""

import asyncio
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlmodel import Session

from api.app import create_app
from controller.accounts import NewAccount, Role, create_account, hash_password, new_api_key
from controller.service import Controller
from controller.settings import Settings
from deploy.serve import http_server
from devices.messages import now_utc
from devices.topics import TopicScheme
from simulator.fleet import Behaviour, SimulatedSpec, fleet_for_villages
from simulator.runner import Fleet
from simulator.scenario import Scenario


def http_client(base_url: str | httpx.URL, **headers: str) -> httpx.AsyncClient:
    """A client of a live server. It lets an idle connection go after 2 s, before uvicorn closes it
    (5 s): reusing one the server is closing at that moment fails the request (ReadError)."""
    return httpx.AsyncClient(
        base_url=base_url, timeout=30, headers=headers, limits=httpx.Limits(keepalive_expiry=2)
    )


class LiveServer:
    """uvicorn + the app (and so the controller) on a free port; `http` is a client bound to it."""

    def __init__(self, settings: Settings) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        if settings.public_url is None:
            # The URLs it hands out (audio, CAP) lead back to it, as they would in a deployment.
            settings = settings.model_copy(update={"public_url": f"http://127.0.0.1:{self.port}"})
        self.settings = settings
        self.app = create_app(settings)
        self.server = http_server(self.app, "127.0.0.1", self.port)
        self.http = http_client(f"http://127.0.0.1:{self.port}")
        self._task: asyncio.Task[None] | None = None
        self._clients: list[httpx.AsyncClient] = []
        self.refresh_tokens: dict[str, str] = {}

    @property
    def controller(self) -> Controller:
        controller: Controller = self.app.state.controller
        return controller

    @property
    def topics(self) -> TopicScheme:
        return self.settings.topics

    async def start(self) -> None:
        self.server.config.install_signal_handlers = False  # type: ignore[attr-defined]
        self._task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        deadline = time.monotonic() + 20
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("server stopped during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            await asyncio.sleep(0.02)
        # Unique: a test may start a second server on the same database.
        self.http.headers["X-API-Key"] = await self.api_key(f"test-admin-{secrets.token_hex(4)}", Role.ADMIN)

    async def __aenter__(self) -> "LiveServer":
        await self.start()
        return self

    async def api_key(self, name: str, role: Role, region: str | None = None) -> str:
        """A new API key straight into the database (as `cunxiang admin api-key` makes one)."""

        def store(session: Session) -> str:
            _record, key = new_api_key(
                session, name, role, region or self.settings.county_region, "tests", now_utc()
            )
            session.commit()
            return key

        return await self.controller.writer.call(store)

    async def account(self, username: str, role: Role, region: str | None = None) -> httpx.AsyncClient:
        """A new account, signed in through the token endpoint: a client carrying its access token.
        Its password is `password-<username>`; its refresh token is in `refresh_tokens`."""
        password = f"password-{username}"
        new = NewAccount(
            username=username, role=role, region=region or self.settings.county_region, password=password
        )
        password_hash = hash_password(password)

        def store(session: Session) -> None:
            create_account(session, new, password_hash, "tests", now_utc())
            session.commit()

        await self.controller.writer.call(store)
        client = http_client(self.http.base_url)
        self._clients.append(client)
        answer = await client.post("/api/v1/auth/token", data={"username": username, "password": password})
        assert answer.status_code == 200, answer.text
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        self.refresh_tokens[username] = answer.json()["refresh_token"]
        return client

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        for client in self._clients:
            await client.aclose()
        await self.http.aclose()
        self.server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)
        self.socket.close()

    async def register(self, specs: list[SimulatedSpec]) -> None:
        response = await self.http.post("/api/v1/terminals", json=[s.registration() for s in specs])
        assert response.status_code == 200, response.text

    async def send(self, **body: Any) -> dict[str, Any]:
        response = await self.http.post("/api/v1/broadcasts", json=body)
        assert response.status_code == 201, response.text
        accepted: dict[str, Any] = response.json()
        return accepted

    async def report(self, broadcast_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/broadcasts/{broadcast_id}")
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report

    async def report_when(
        self, broadcast_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll the report until `done(report)`; fail with the last report on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            report = await self.report(broadcast_id)
            if done(report):
                return report
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last report: {report}")
            await asyncio.sleep(0.1)

    def fleet(self, specs: list[SimulatedSpec], scenario: Scenario | None = None, **behaviour: Any) -> Fleet:
        broker = self.controller.bus
        assert broker is not None
        return Fleet(
            specs,
            broker.address.host,
            broker.address.port,
            self.controller.keys.keyset(),
            self.topics,
            Behaviour(**({"playback_s": 0.3, "start_delay_s": (0.0, 0.05)} | behaviour)),  # type: ignore[arg-type]
            scenario=scenario,
            tls=broker.address.tls,
        )


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def specs_in(villages: list[str], per_village: int = 1) -> list[SimulatedSpec]:
    return fleet_for_villages(villages, per_village)


def metric(text: str, name: str, **labels: str) -> float:
    selector = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(selector + " "):
            return float(line.split()[-1])
    return 0.0


async def metrics_text(live: LiveServer) -> str:
    response = await live.http.get("/metrics")
    assert response.status_code == 200
    return response.text
