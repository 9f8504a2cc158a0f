"""Random and hostile requests against a live server: never a 5xx, always the error format."""

from __future__ import annotations

import string
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import LiveServer
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.runtime.settings import Settings

FUZZ = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "email",
    "password",
    "name",
    "expires_at",
    "working_directory",
    "description",
    "model",
    "run_mode",
    "max_iterations",
    "content",
]
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | json_values


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, shared_database_url: str | None
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz")
    provider = ScriptedOpenAIServer(
        responder=lambda body: ScriptedTurn(tool_calls=[("finish", {"summary": "ok"})])
    ).start_in_thread()
    settings_ = Settings(
        database_url=shared_database_url,
        data_dir=root.with_name(root.name + "-data"),  # (beside the workspace, not in it)
        jwt_secret="fuzz-secret-" + "x" * 32,
        rate_limit_authenticated=0,
        rate_limit_anonymous=0,
    )
    env = {"OPENAI_API_KEY": "sk-fuzz", "OPENAI_BASE_URL": provider.base_url}
    with LiveServer(settings_, env) as live:
        live.request(
            "POST",
            "/api/auth/register",
            {"email": "fuzz@example.com", "password": "fuzzing-password", "name": "F"},
        )
        _, _, token = live.request(
            "POST", "/api/auth/login", {"email": "fuzz@example.com", "password": "fuzzing-password"}
        )
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        _, _, session = live.request(
            "POST", "/api/sessions", {"name": "s", "working_directory": str(root)}, headers=auth
        )
        yield {"live": live, "auth": auth, "session": session["id"]}
    provider.stop_in_thread()
    print(f"fuzz cases run: {FUZZ_CASES[0]}")


FUZZ_CASES = [0]


def check(status: int, body: Any) -> None:
    FUZZ_CASES[0] += 1
    assert status < 500, body
    if status >= 400:
        assert isinstance(body, dict) and set(body) == {"detail", "code", "timestamp"}, body


def routes(session: str) -> list[str]:
    return [
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/api-keys",
        "/api/sessions",
        f"/api/sessions/{session}/tasks",
        "/api/tasks/nope/stop",
        "/api/tasks/nope/input",
    ]


@FUZZ
@given(route=st.integers(0, 6), body=bodies)
def test_random_json_bodies(server: dict[str, Any], route: int, body: Any) -> None:
    path = routes(server["session"])[route]
    status, _, answer = server["live"].request("POST", path, body, headers=server["auth"])
    check(status, answer)


@FUZZ
@given(route=st.integers(0, 6), raw=st.binary(max_size=300))
def test_random_bytes_as_bodies(server: dict[str, Any], route: int, raw: bytes) -> None:
    path = routes(server["session"])[route]
    status, _, answer = server["live"].request("POST", path, raw=raw, headers=server["auth"])
    check(status, answer)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
    path=st.lists(st.text(string.ascii_letters + string.digits + "-_.%~", max_size=12), max_size=5),
    after=st.text(max_size=10),
)
def test_random_paths_and_queries(
    server: dict[str, Any], method: str, path: list[str], after: str
) -> None:
    url = "/api/" + "/".join(path) + "?provider=" + urllib.parse.quote(after)
    status, _, answer = server["live"].request(method, url, headers=server["auth"])
    check(status, answer)


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


@FUZZ
@given(token=HEADER_TEXT, key=HEADER_TEXT)
def test_hostile_credentials(server: dict[str, Any], token: str, key: str) -> None:
    # (bytes that are not legal in an HTTP header never reach the app: aiohttp's
    # parser answers them with a plain 400 before routing)
    headers = {"Authorization": f"Bearer {token}", "X-API-Key": key}
    status, _, answer = server["live"].request("GET", "/api/sessions", headers=headers)
    check(status, answer)
    assert status == 401


def test_body_over_the_limit_is_413(server: dict[str, Any], tmp_path: Path) -> None:
    raw = b'{"description": "' + b"x" * 2_000_000 + b'"}'
    path = f"/api/sessions/{server['session']}/tasks"
    status, _, answer = server["live"].request("POST", path, raw=raw, headers=server["auth"])
    check(status, answer)
    assert status == 413 and answer["code"] == "PAYLOAD_TOO_LARGE"
