"""The OpenAPI document is complete, and the running API keeps to it.

Schemathesis generates requests for every operation from the document (examples, boundary
values, random and deliberately invalid input) and sends them over real HTTP, with an
administrator's API key, to a real server: uvicorn, the controller, a SQLite database and the
embedded MQTT broker. Every answer must be no server error (5xx), a status the operation
declares, with the declared content type and a body matching the declared schema.

The server runs in a thread with its own event loop for the whole module: schemathesis's tests
are synchronous (it sends with `requests`), and starting a controller per generated case would
take minutes. The schema is loaded from the document at import, so pytest collects one test per
operation (`schemathesis.pytest.from_fixture` would defer it, but fails on pytest 9.2). Before the
run the server gets a few terminals, groups, a programme, schedules, an account, a spare API key
and one broadcast. A path parameter naming one of those, and the regions, terminals, groups and
programme in a body, are sometimes replaced by seeded ones, so that generated requests also get
past the region check and meet objects that exist (not only 403 and 404). Generation is
deterministic, so CI runs the same cases every time.
"""

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import fastapi.routing
import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st

from api.app import create_app
from api.auth import TOKEN_URL
from controller.accounts import Role
from controller.embedded_broker import EmbeddedBroker
from tests.conftest import make_settings
from tests.live import LiveServer, specs_in

T = TypeVar("T")

# Not generated: the progress stream of a broadcast answers for as long as the broadcast lasts
# (and keeps a request open), and a media file is named by its content hash, so a generated name
# only ever meets 404 (test_update.py downloads real ones).
EXCLUDED = {("GET", "/api/v1/broadcasts/{broadcast_id}/events"), ("GET", "/media/{name}")}
# Answers that are not JSON, so have no schema to name.
STREAMS = {
    ("GET", "/api/v1/broadcasts/{broadcast_id}/events"),
    ("GET", "/media/{name}"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/cap/messages/{message_id}/raw"),
    ("GET", "/api/v1/broadcasts/{broadcast_id}/cap"),
    ("GET", "/api/v1/cap/feed"),
}
# Routes anyone may call: signing in, the terminals' downloads, monitoring.
PUBLIC = {
    ("POST", "/api/v1/auth/token"),
    ("POST", "/api/v1/auth/refresh"),
    ("GET", "/media/{name}"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
}
DOCS_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# CapProblem is a Problem that also names the record kept of the refused CAP message.
ERROR_SCHEMAS = {
    "#/components/schemas/Problem",
    "#/components/schemas/CapProblem",
    "#/components/schemas/HTTPValidationError",
}
VILLAGES = ["421202100001", "421202100004", "421202101001"]
TOWNSHIP = VILLAGES[0][:9]


class ServerThread:
    """A LiveServer on an event loop of its own, in a daemon thread."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="openapi-server", daemon=True)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=60)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        self.run(self.live.start())
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.run(self.live.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


async def seed(live: LiveServer) -> None:
    """Objects for generated requests to meet, by the name of the path parameter that names them:
    one set in KNOWN, and one in DOOMED for DELETE (else the first deletion leaves the operations
    after it only 404s)."""
    specs = specs_in(VILLAGES)
    await live.register(specs)
    programme = await live.http.post("/api/v1/programmes", json={"title": "农技", "text": "今天的农技节目"})
    assert programme.status_code == 201, programme.text
    for ids, terminal in ((KNOWN, specs[0].terminal_id), (DOOMED, specs[2].terminal_id)):
        group_id = "river" if ids is KNOWN else "doomed"
        group = await live.http.put(
            f"/api/v1/groups/{group_id}", json={"name": "沿河村", "terminals": [terminal]}
        )
        schedule = await live.http.post(
            "/api/v1/schedules",
            json={
                "name": "早间",
                "programme_id": programme.json()["id"],
                "regions": [VILLAGES[0]],
                "start": "2030-01-01T06:30",
                "rrule": "FREQ=DAILY",
            },
        )
        for answer in (group, schedule):
            assert answer.status_code in (200, 201), answer.text
        ids.update(
            terminal_id=terminal,
            group_id=group_id,
            schedule_id=schedule.json()["id"],
            programme_id=programme.json()["id"],
            code=TOWNSHIP,
        )
    await live.account("clerk", Role.OPERATOR, TOWNSHIP)
    await live.api_key("spare", Role.VIEWER)
    broadcast = await live.send(kind="notice", regions=[TOWNSHIP], text="通知", expires_in=600)
    KNOWN.update(broadcast_id=broadcast["id"], username="clerk")
    DOOMED.update(name="spare")


def _in_the_county(body: Any) -> Any:
    """The body with its regions, terminals, groups and programme replaced by seeded ones, so that
    some generated requests get past the region check and the lookups."""
    if isinstance(body, list):
        return [_in_the_county(item) for item in body]
    if not isinstance(body, dict):
        return body
    known: dict[str, Any] = {
        "region": VILLAGES[0],
        "regions": [TOWNSHIP],
        "issuer_region": TOWNSHIP,
        "terminals": [KNOWN["terminal_id"]],
        "groups": [KNOWN["group_id"]],
        "programme_id": KNOWN["programme_id"],
    }
    return {key: known.get(key, value) for key, value in body.items()}


@pytest.fixture(scope="module")
def server(
    embedded_broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    database = tmp_path_factory.mktemp("openapi") / "cunxiang.db"
    live = LiveServer(make_settings(f"sqlite:///{database}", embedded_broker.url))
    with ServerThread(live) as running:
        running.run(seed(live))
        yield running
    KNOWN.clear()
    DOOMED.clear()


# The document does not depend on settings, so it is read from an app that never starts; the
# schema must exist when pytest collects, one test per operation, before any server runs.
DOCUMENT = create_app(make_settings("sqlite://", "mqtt://127.0.0.1:1883")).openapi()
# Ids of the seeded objects, filled in by the `server` fixture before any case is generated.
KNOWN: dict[str, str] = {}
DOOMED: dict[str, str] = {}
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {"generation": {"max-examples": 25, "deterministic": True, "with-security-parameters": False}}
    ),
).exclude(func=lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in EXCLUDED)


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """As generated, or with the ids of seeded objects in place of generated ones."""
    assert context.operation is not None
    ids = DOOMED if context.operation.method.upper() == "DELETE" else KNOWN
    existing = {name: ids[name] for name in parameters or {} if name in ids}
    if parameters is None or not existing:
        return st.just(parameters)
    return st.sampled_from([parameters, parameters | existing])


@schema.hook
def flatmap_body(_context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from([body, _in_the_county(body)])


@schema.parametrize()
@hypothesis.settings(deadline=None, derandomize=True, suppress_health_check=list(hypothesis.HealthCheck))
def test_answers_keep_to_the_document_and_are_never_server_errors(
    case: schemathesis.Case[Any], server: ServerThread
) -> None:
    case.call_and_validate(
        base_url=str(server.live.http.base_url).rstrip("/"),
        headers={"X-API-Key": server.live.http.headers["X-API-Key"]},
        checks=[
            schemathesis.checks.not_a_server_error,
            schemathesis.checks.status_code_conformance,
            schemathesis.checks.content_type_conformance,
            schemathesis.checks.response_schema_conformance,
        ],
    )


def _operations(app: FastAPI) -> set[tuple[str, str]]:
    """Every method and path the app answers, from its routes rather than from its document."""
    # FastAPI 0.16x keeps an included router whole, and iter_route_contexts walks into it; before,
    # `app.routes` held every route.
    routes: Iterable[Any] = getattr(fastapi.routing, "iter_route_contexts", iter)(app.routes)
    return {
        (method, route.path_format)
        for route in routes
        # The console's pages are HTML for browsers, left out of the API's document on purpose.
        if route.path_format not in DOCS_PATHS and getattr(route, "include_in_schema", True)
        for method in (route.methods or set()) - {"HEAD"}
    }


def _documented() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def test_every_route_is_in_the_document() -> None:
    app = create_app(make_settings("sqlite://", "mqtt://127.0.0.1:1883"))
    assert _operations(app) == {(method, path) for method, path, _operation in _documented()}


def test_the_security_schemes_are_the_token_flow_and_the_api_key_header() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["OAuth2PasswordBearer"]["flows"] == {"password": {"scopes": {}, "tokenUrl": TOKEN_URL}}
    assert schemes["APIKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_operations_needing_a_principal_declare_it_and_its_refusals() -> None:
    for method, path, operation in _documented():
        if (method, path) in PUBLIC:
            assert "security" not in operation, (method, path)
            continue
        assert operation.get("security") == [{"OAuth2PasswordBearer": []}, {"APIKeyHeader": []}], (
            method,
            path,
        )
        assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_every_error_answer_is_a_problem_and_every_body_taking_operation_declares_400_and_422() -> None:
    for method, path, operation in _documented():
        responses = operation["responses"]
        for code, response in responses.items():
            if int(code) < 400:
                continue
            content = response.get("content", {})
            if (method, path) in STREAMS and "application/json" not in content:
                assert content, (method, path, code)
                continue
            # /healthz answers 503 with the same report as 200, saying what is wrong.
            allowed = ERROR_SCHEMAS | ({"#/components/schemas/Health"} if path == "/healthz" else set())
            assert content["application/json"]["schema"]["$ref"] in allowed, (method, path, code)
        if "requestBody" in operation:
            assert {"400", "422"} <= set(responses), (method, path)


def test_every_answer_has_a_named_schema_but_streams() -> None:
    for method, path, operation in _documented():
        if (method, path) in STREAMS:
            continue
        for code, response in operation["responses"].items():
            if code == "204":
                assert "content" not in response, (method, path)
                continue
            schema = response["content"]["application/json"]["schema"]
            named = schema.get("items", schema)
            assert set(named) == {"$ref"}, (method, path, code, schema)
