"""Paginated lists: `GET /api/sessions` and `GET /api/sessions/{id}/tasks` through a real
server, following `X-Next-Cursor` page by page; bad limits and cursors are 422; a cursor
positions only within the caller's own list."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from http_helpers import User, create_session, create_task, expect_error, expect_json, sign_up
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.api import Runtime
from minidevin.http.app import create_app

MAX_PAGES = 20  # every page walk is bounded


@pytest.fixture
async def client(
    runtime: Runtime, aiohttp_client: Any, openai_server: ScriptedOpenAIServer
) -> TestClient:
    async def done(body: dict[str, Any]) -> ScriptedTurn:
        return ScriptedTurn(text="Done.")

    openai_server.responder = done
    return await aiohttp_client(create_app(runtime, manage_runtime=False))


def workdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


async def walk(
    client: TestClient, user: User, path: str, limit: int
) -> tuple[list[list[dict[str, Any]]], list[ClientResponse]]:
    """Every page of `path` with `limit`, following `X-Next-Cursor` (and checking `Link`)."""
    pages: list[list[dict[str, Any]]] = []
    responses: list[ClientResponse] = []
    url: str | None = f"{path}?limit={limit}"
    for _ in range(MAX_PAGES):
        if url is None:
            return pages, responses
        response = await client.get(url, headers=user.key)
        pages.append(await expect_json(response))
        responses.append(response)
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in response.headers
            url = None
        else:
            link = response.headers["Link"]
            assert link.endswith('>; rel="next"') and link.startswith(f"<{path}?"), link
            assert f"cursor={cursor}" in link and f"limit={limit}" in link, link
            url = f"{path}?limit={limit}&cursor={cursor}"
    raise AssertionError(f"more than {MAX_PAGES} pages")


def newest_first(rows: list[dict[str, Any]]) -> bool:
    stamps = [row["created_at"] for row in rows]
    return stamps == sorted(stamps, reverse=True)


async def test_sessions_come_in_pages_of_limit_newest_first_without_gaps_or_repeats(
    client: TestClient, tmp_path: Path
) -> None:
    user = await sign_up(client)
    created = [await create_session(client, user, workdir(tmp_path, f"s{i}")) for i in range(7)]
    everything = await expect_json(await client.get("/api/sessions", headers=user.key))
    assert [s["id"] for s in everything] == [s["id"] for s in reversed(created)]

    pages, responses = await walk(client, user, "/api/sessions", 3)
    assert [len(page) for page in pages] == [3, 3, 1]
    walked = [s["id"] for page in pages for s in page]
    assert walked == [s["id"] for s in everything]
    assert newest_first([s for page in pages for s in page])
    assert all(isinstance(page, list) for page in pages)  # the body stays a JSON array
    assert "X-Next-Cursor" not in responses[-1].headers

    # exactly `limit` sessions left: the page that holds them is the last
    pages, _ = await walk(client, user, "/api/sessions", 7)
    assert [len(page) for page in pages] == [7]


async def test_a_session_created_between_pages_shifts_nothing(
    client: TestClient, tmp_path: Path
) -> None:
    user = await sign_up(client)
    for i in range(5):
        await create_session(client, user, workdir(tmp_path, f"s{i}"))
    first = await client.get("/api/sessions?limit=2", headers=user.key)
    page_one = await expect_json(first)
    newer = await create_session(client, user, workdir(tmp_path, "newer"))
    cursor = first.headers["X-Next-Cursor"]
    rest = await expect_json(
        await client.get(f"/api/sessions?limit=10&cursor={cursor}", headers=user.key)
    )
    ids = [s["id"] for s in [*page_one, *rest]]
    assert len(ids) == len(set(ids)) == 5 and newer["id"] not in ids


async def test_tasks_come_in_pages_oldest_first_and_new_ones_join_the_end(
    client: TestClient, tmp_path: Path
) -> None:
    user = await sign_up(client)
    session = await create_session(client, user, workdir(tmp_path, "repo"))
    created = [await create_task(client, user, session["id"], f"task {i}") for i in range(7)]
    path = f"/api/sessions/{session['id']}/tasks"
    everything = await expect_json(await client.get(path, headers=user.key))
    assert [t["id"] for t in everything] == [t["id"] for t in created]

    pages, _ = await walk(client, user, path, 3)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [t["id"] for page in pages for t in page] == [t["id"] for t in created]
    stamps = [t["created_at"] for page in pages for t in page]
    assert stamps == sorted(stamps)

    first = await client.get(f"{path}?limit=6", headers=user.key)
    page_one = await expect_json(first)
    later = await create_task(client, user, session["id"], "task 7")
    cursor = first.headers["X-Next-Cursor"]
    rest = await expect_json(await client.get(f"{path}?cursor={cursor}", headers=user.key))
    assert [t["id"] for t in [*page_one, *rest]] == [t["id"] for t in [*created, later]]


@pytest.mark.parametrize("limit", ["0", "501", "-1", "abc", "1.5", "", "99999999999999999999"])
async def test_a_bad_limit_is_422(client: TestClient, tmp_path: Path, limit: str) -> None:
    user = await sign_up(client)
    session = await create_session(client, user, workdir(tmp_path, "repo"))
    for path in ("/api/sessions", f"/api/sessions/{session['id']}/tasks"):
        body = await expect_error(
            await client.get(path, params={"limit": limit}, headers=user.key),
            422,
            "VALIDATION_ERROR",
        )
        assert "limit" in body["detail"]


def forged(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_a_bad_cursor_is_422(client: TestClient, tmp_path: Path) -> None:
    user = await sign_up(client)
    session = await create_session(client, user, workdir(tmp_path, "a"))
    await create_session(client, user, workdir(tmp_path, "b"))
    for i in range(2):
        await create_task(client, user, session["id"], f"task {i}")
    tasks = f"/api/sessions/{session['id']}/tasks"
    session_cursor = (await client.get("/api/sessions?limit=1", headers=user.key)).headers[
        "X-Next-Cursor"
    ]
    task_cursor = (await client.get(f"{tasks}?limit=1", headers=user.key)).headers["X-Next-Cursor"]
    bad = [
        "",
        "not a cursor!",
        "%%%",
        "x" * 600,
        forged({"k": 1}),
        forged(["sessions", "2024-01-01T00:00:00Z"]),
        forged(["sessions", "2024-01-01T00:00:00Z", "1"]),
        forged(["sessions", 5, 1]),
        forged(["sessions", "2024-01-01T00:00:00Z", 2**70]),
        forged(["users", "2024-01-01T00:00:00Z", 1]),
    ]
    for path, wrong_kind in (("/api/sessions", task_cursor), (tasks, session_cursor)):
        for cursor in [*bad, wrong_kind]:
            body = await expect_error(
                await client.get(path, params={"cursor": cursor}, headers=user.key),
                422,
                "VALIDATION_ERROR",
            )
            assert "cursor" in body["detail"]


async def test_another_users_cursor_positions_only_within_your_own_list(
    client: TestClient, tmp_path: Path
) -> None:
    ada, bob = await sign_up(client), await sign_up(client, "bob@example.com", "Bob")
    ada_sessions = [await create_session(client, ada, workdir(tmp_path, f"a{i}")) for i in range(3)]
    bob_sessions = [await create_session(client, bob, workdir(tmp_path, f"b{i}")) for i in range(3)]
    bob_ids = {s["id"] for s in bob_sessions}
    bob_page = await client.get("/api/sessions?limit=1", headers=bob.key)
    cursor = bob_page.headers["X-Next-Cursor"]

    with_bobs_cursor = await expect_json(
        await client.get(f"/api/sessions?cursor={cursor}", headers=ada.key)
    )
    # bob's cursor stands after his newest session, newer than all of ada's: her whole list
    assert [s["id"] for s in with_bobs_cursor] == [s["id"] for s in reversed(ada_sessions)]
    assert not bob_ids & {s["id"] for s in with_bobs_cursor}

    task = await create_task(client, bob, bob_sessions[0]["id"], "bob's task")
    await create_task(client, bob, bob_sessions[0]["id"], "bob's second task")
    bob_tasks = f"/api/sessions/{bob_sessions[0]['id']}/tasks"
    task_cursor = (await client.get(f"{bob_tasks}?limit=1", headers=bob.key)).headers[
        "X-Next-Cursor"
    ]
    await expect_error(
        await client.get(f"{bob_tasks}?cursor={task_cursor}", headers=ada.key), 404, "NOT_FOUND"
    )
    ada_tasks = f"/api/sessions/{ada_sessions[0]['id']}/tasks"
    assert (
        await expect_json(await client.get(f"{ada_tasks}?cursor={task_cursor}", headers=ada.key))
        == []
    )
    assert task["id"]


async def test_the_embedding_calls_return_everything_unless_given_a_limit(
    runtime: Runtime, tmp_path: Path
) -> None:
    created = [await runtime.create_session(f"s{i}", workdir(tmp_path, f"s{i}")) for i in range(4)]
    everything = await runtime.list_sessions()
    assert [s.id for s in everything] == [s.id for s in reversed(created)]
    assert everything.next_cursor is None
    first = await runtime.list_sessions(limit=3)
    assert len(first) == 3 and first.next_cursor is not None
    rest = await runtime.list_sessions(limit=3, cursor=first.next_cursor)
    assert [s.id for s in [*first, *rest]] == [s.id for s in everything]
    assert rest.next_cursor is None
    assert [s.id for s in await runtime.list_sessions(cursor=first.next_cursor)] == [
        s.id for s in rest
    ]
