"""The OpenAPI document: valid 3.1, in step with the app's routes, and true of a live server.

The schemathesis run sends generated requests (valid and invalid) for every
operation of the document to a real server, authenticated with an API key, and
checks: no 5xx, every 4xx/5xx in the error format `{detail, code, timestamp}`,
status codes, content types and response bodies as documented. Every other case
is pointed at real objects (a session, a finished task with its artifacts, a
task waiting for input) and usable values (an existing working directory, the
real login), so the handlers behind the 404s and 422s run too. The documented
failures have xfail tests of their own at the end and are not validated in the run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from live_server import LiveServer
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import wait_for

from minidevin.api import Runtime
from minidevin.http import console
from minidevin.http.access import PUBLIC_PATHS
from minidevin.http.app import create_app
from minidevin.http.idempotency import IDEMPOTENT_ROUTES
from minidevin.http.openapi import OPENAPI_PATH, OPERATIONS, build_document
from minidevin.runtime.settings import Settings

DOCUMENT = build_document()
EMAIL = "openapi@example.com"
PASSWORD = "openapi-password"
WAIT_MARKER = "keep-asking"  # a task whose description says this waits for input forever
ERROR_KEYS = {"detail", "code", "timestamp"}
# explicit, so that no schemathesis.toml found on the way changes the run: all phases
# (examples, coverage, fuzzing), valid and invalid data
CONFIG = schemathesis.Config.from_dict({"generation": {"mode": "all"}})
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
RUN = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


# -- the document ---------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    validate(DOCUMENT)  # openapi-spec-validator picks the 3.1 validator from the version
    assert SCHEMA.specification.version.startswith("3.1")
    json.dumps(DOCUMENT)  # plain JSON all the way down


def test_the_document_covers_every_route_of_the_app_and_no_other(tmp_path: Path) -> None:
    settings_ = Settings(
        data_dir=tmp_path / "data",
        jwt_secret="openapi-secret-" + "x" * 32,
    )
    app = create_app(Runtime(settings_), manage_runtime=False)
    pages = {(route.method.lower(), route.path) for route in console.routes}  # (HTML, not API)
    assert ("get", "/") in pages and ("get", "/api/docs") in pages
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp's implicit HEADs
    } - {(method, path.replace("{name:.+}", "{name}")) for method, path in pages}
    documented = {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}
    assert registered == documented
    assert len(OPERATIONS) == len(documented)


def test_both_security_schemes_guard_every_api_route_but_the_public_ones() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["bearerAuth"]["bearerFormat"] == "JWT"
    assert schemes["apiKeyAuth"] == {
        **schemes["apiKeyAuth"],
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            security = operation["security"]
            if path in PUBLIC_PATHS:
                assert security == [], (method, path)
            elif path.startswith("/api/"):
                assert security == [{"bearerAuth": []}, {"apiKeyAuth": []}], (method, path)
                assert "401" in operation["responses"], (method, path)
    assert {"/health", "/api/auth/register", "/api/auth/login", OPENAPI_PATH} <= PUBLIC_PATHS


def test_statuses_errors_and_the_websocket_are_described() -> None:
    paths = DOCUMENT["paths"]
    success = {
        ("post", "/api/auth/register"): "201",
        ("post", "/api/auth/api-keys"): "201",
        ("post", "/api/sessions"): "201",
        ("post", "/api/sessions/{session_id}/tasks"): "201",
        ("delete", "/api/sessions/{session_id}"): "204",
        ("post", "/api/tasks/{task_id}/input"): "202",
        ("get", "/api/sessions"): "200",
        ("get", "/ws/tasks/{task_id}"): "101",
    }
    for (method, path), status in success.items():
        assert min(paths[path][method]["responses"]) == status, (method, path)
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for item in paths.values():
        for operation in item.values():
            for status, answer in operation["responses"].items():
                if status >= "400":
                    assert answer["content"]["application/json"]["schema"] == error
    assert set(DOCUMENT["components"]["schemas"]["ErrorBody"]["required"]) == ERROR_KEYS
    download = paths["/api/tasks/{task_id}/artifacts/{artifact_id}"]["get"]["responses"]["200"]
    assert {"application/octet-stream", "*/*"} <= set(download["content"])
    stream = paths["/ws/tasks/{task_id}"]["get"]
    assert "upgrade" in stream["description"].lower()
    assert {p["name"] for p in stream["parameters"]} == {"task_id", "token", "after"}


def test_idempotency_keys_and_pages_are_described() -> None:
    paths = DOCUMENT["paths"]
    idempotent = {(method.lower(), path) for method, path in IDEMPOTENT_ROUTES}
    assert len(idempotent) == 5
    for path, item in paths.items():
        for method, operation in item.items():
            headers = [p for p in operation.get("parameters", []) if p["in"] == "header"]
            success = min(operation["responses"])
            replayed = operation["responses"][success].get("headers", {}).get("Idempotent-Replayed")
            if (method, path) in idempotent:
                (header,) = headers
                assert header["name"] == "Idempotency-Key" and not header["required"]
                assert header["schema"]["maxLength"] == 255
                assert "IDEMPOTENCY_KEY_REUSED" in header["description"]
                assert replayed["schema"] == {"type": "string", "enum": ["true"]}
                assert {"409", "422"} <= set(operation["responses"])
            else:
                assert headers == [] and replayed is None, (method, path)
    for path in ("/api/sessions", "/api/sessions/{session_id}/tasks"):
        operation = paths[path]["get"]
        names = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert names == {"limit", "cursor"}
        assert set(operation["responses"]["200"]["headers"]) == {"X-Next-Cursor", "Link"}


async def test_the_document_is_served_without_credentials(
    aiohttp_client: Any, tmp_path: Path, database_url: str | None
) -> None:
    settings_ = Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        jwt_secret="openapi-secret-" + "x" * 32,
    )
    client = await aiohttp_client(create_app(Runtime(settings_)))
    response = await client.get(OPENAPI_PATH)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    assert await response.json() == DOCUMENT
    assert build_document() is DOCUMENT  # built once


# -- schemathesis against a live server -------------------------------------------------------


@dataclass
class Api:
    live: LiveServer
    key: str
    ids: dict[str, list[str]]
    root: Path
    cases: int = 0
    substitutions: int = 0
    operations: dict[str, Counter[int]] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, _, answer = self.live.request(method, path, body, headers=self.headers)
        assert status < 300, (method, path, status, answer)
        return answer


def respond(body: dict[str, Any]) -> ScriptedTurn:
    """Tasks finish at once, but one that is told to keep asking asks forever."""
    if WAIT_MARKER in json.dumps(body["messages"][:2]):
        return ScriptedTurn(tool_calls=[("ask_user", {"question": "and now?"})])
    return ScriptedTurn(tool_calls=[("finish", {"summary": "done"})])


def wait_for_status(api: Api, task_id: str, statuses: set[str]) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def reached() -> dict[str, Any] | None:
        seen[:] = [api.call("GET", f"/api/tasks/{task_id}")]
        return seen[0] if seen[0]["status"] in statuses else None

    return wait_for(reached, 20, what=lambda: f"a status in {statuses}: {seen}", interval=0.05)


def waiting_task(api: Api) -> str:
    """A task waiting for input (forever), alone in its session so it blocks no other."""
    body = {"name": "waiting", "working_directory": str(api.root)}
    session = api.call("POST", "/api/sessions", body)
    body = {"description": f"{WAIT_MARKER} me", "max_iterations": 1000}
    task = api.call("POST", f"/api/sessions/{session['id']}/tasks", body)
    wait_for_status(api, task["id"], {"waiting_input"})
    return str(task["id"])


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    """Overrides conftest's: the module's live server keeps its actors across tests."""
    yield


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, shared_database_url: str | None) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("openapi")
    workspace = root / "workspace"  # (not the data dir's parent: snapshots would take it in)
    workspace.mkdir()
    provider = ScriptedOpenAIServer(responder=respond).start_in_thread()
    settings_ = Settings(
        database_url=shared_database_url,
        data_dir=root / "data",
        jwt_secret="openapi-secret-" + "x" * 32,
        rate_limit_authenticated=0,  # schemathesis sends far more than 100 requests a minute
        rate_limit_anonymous=0,
        sandbox="off",
    )
    env = {"OPENAI_API_KEY": "sk-openapi", "OPENAI_BASE_URL": provider.base_url}
    try:
        with LiveServer(settings_, env) as live:
            user = {"email": EMAIL, "password": PASSWORD, "name": "O"}
            assert live.request("POST", "/api/auth/register", user)[0] == 201
            login = {"email": EMAIL, "password": PASSWORD}
            _, _, token = live.request("POST", "/api/auth/login", login)
            bearer = {"Authorization": f"Bearer {token['access_token']}"}
            _, _, key = live.request("POST", "/api/auth/api-keys", {"name": "st"}, headers=bearer)
            api = Api(live, key["key"], {}, workspace)
            session = api.call(
                "POST", "/api/sessions", {"name": "s", "working_directory": str(workspace)}
            )
            path = f"/api/sessions/{session['id']}/tasks"
            done = api.call("POST", path, {"description": "say done"})
            waiting = [waiting_task(api), waiting_task(api)]  # for /input; for /stop
            wait_for_status(api, done["id"], {"completed"})
            artifacts = api.call("GET", f"/api/tasks/{done['id']}/artifacts")
            assert artifacts
            api.ids = {
                "session_id": [session["id"]],
                "task_id": [done["id"], waiting[0]],
                "stop:task_id": [done["id"], waiting[1]],
                "artifact_id": [artifact["id"] for artifact in artifacts],
            }
            yield api
    finally:
        provider.stop_in_thread()
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
    print(f"\nschemathesis: {api.cases} cases over {len(api.operations)} operations")
    for label, statuses in sorted(api.operations.items()):
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        print(f"  {statuses.total():4} {label} ({answers})")


def error_format(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx/5xx answer is exactly `{detail, code, timestamp}`, in JSON."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{response.status_code}: {content_type}"
    body = response.json()
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert all(isinstance(body[key], str) and body[key] for key in ERROR_KEYS), body
    return None


CHECKS = [
    not_a_server_error,
    error_format,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def use_real_values(api: Api, case: schemathesis.Case) -> None:
    """Point the case at real objects and usable values, so the handlers get past the 404/422s.

    DELETEs get throwaway objects of their own; a register is sent with a fresh
    email or a taken one (201 or 409), a login with the real credentials.
    """
    api.substitutions += 1
    turn = api.substitutions
    params = case.path_parameters or {}
    if case.operation.method.upper() == "DELETE" and "session_id" in params:
        body = {"name": "throwaway", "working_directory": str(api.root)}
        params["session_id"] = api.call("POST", "/api/sessions", body)["id"]
    elif case.operation.method.upper() == "DELETE" and "key_id" in params:
        params["key_id"] = api.call("POST", "/api/auth/api-keys", {"name": "throwaway"})["id"]
    else:
        stop = case.operation.path.endswith("/stop")
        for name in params:
            choices = api.ids.get(f"stop:{name}" if stop else name) or api.ids.get(name)
            if choices:
                params[name] = choices[turn % len(choices)]
    if isinstance(case.body, dict):
        body = case.body
        if "working_directory" in body:
            body["working_directory"] = str(api.root)
        if case.operation.label == "POST /api/auth/register":
            body["email"] = f"user{turn}@example.com" if turn % 3 else EMAIL
        elif case.operation.label == "POST /api/auth/login":
            body.update(email=EMAIL, password=PASSWORD)


@SCHEMA.parametrize()
@RUN
def test_the_live_server_answers_as_documented(case: schemathesis.Case, api: Api) -> None:
    api.cases += 1
    if api.cases % 2 == 0:
        use_real_values(api, case)
    operation = DOCUMENT["paths"][case.operation.path][case.operation.method.lower()]
    public = not operation["security"]
    headers = {} if public or api.cases % 7 == 0 else api.headers  # some go without credentials
    response = case.call(base_url=api.live.url, headers=headers, timeout=30)
    api.operations.setdefault(case.operation.label, Counter())[response.status_code] += 1
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_every_operation_ran(api: Api) -> None:
    if not api.operations:
        pytest.skip("the schemathesis run was deselected")
    assert len(api.operations) == len(OPERATIONS), sorted(api.operations)


# -- once-found failures ---------------------------------------------------------------------


@pytest.mark.parametrize("after", ["\u00b2", "\u2460", "\u0663"])
def test_ws_after_with_a_non_ascii_digit_is_a_clean_422(api: Api, after: str) -> None:
    operation = SCHEMA["/ws/tasks/{task_id}"]["GET"]
    case = operation.Case(
        path_parameters={"task_id": api.ids["task_id"][0]}, query={"after": after}
    )
    response = case.call(base_url=api.live.url, headers=api.headers, timeout=30)
    assert response.status_code == 422
    case.validate_response(response, checks=CHECKS, headers=api.headers)
