"""Safe retries: `Idempotency-Key` on the `POST`s that create something.

A real aiohttp server on 127.0.0.1 over real SQLite; what was created is counted
through the API's own lists.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from direct_db import direct_database
from http_helpers import (
    FIX_DESCRIPTION,
    User,
    create_session,
    expect_error,
    expect_json,
    get_task,
    serve,
    sign_up,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until

from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import open_store

TASK = {"description": FIX_DESCRIPTION, "model": "gpt-4o"}


def keyed(user: User, key: str) -> dict[str, str]:
    return {**user.key, "Idempotency-Key": key}


async def post_task(
    client: TestClient, user: User, session_id: str, key: str | None, body: dict[str, Any] = TASK
) -> Any:
    headers = user.key if key is None else keyed(user, key)
    return await client.post(f"/api/sessions/{session_id}/tasks", json=body, headers=headers)


async def task_count(client: TestClient, user: User, session_id: str) -> int:
    listing = await expect_json(
        await client.get(f"/api/sessions/{session_id}/tasks", headers=user.key)
    )
    return len(listing)


def directory(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


async def test_a_retried_post_answers_the_first_result_and_creates_nothing(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(text="done")] * 4)
    async with serve(settings, openai_server) as client:
        user = await sign_up(client)
        key = str(uuid.uuid4())
        body = {"name": "bug fix", "working_directory": str(directory(tmp_path, "w"))}
        first = await client.post("/api/sessions", json=body, headers=keyed(user, key))
        session = await expect_json(first, 201)
        assert "Idempotent-Replayed" not in first.headers
        again = await client.post("/api/sessions", json=body, headers=keyed(user, key))
        assert await expect_json(again, 201) == session
        assert again.headers["Idempotent-Replayed"] == "true"
        sessions = await expect_json(await client.get("/api/sessions", headers=user.key))
        assert [s["id"] for s in sessions] == [session["id"]]

        task_key = str(uuid.uuid4())
        first = await post_task(client, user, session["id"], task_key)
        first_bytes = await first.read()
        assert first.status == 201, first_bytes
        again = await post_task(client, user, session["id"], task_key)
        assert again.status == 201 and await again.read() == first_bytes
        assert again.headers["Idempotent-Replayed"] == "true"
        assert await task_count(client, user, session["id"]) == 1

        # the same JSON written otherwise (key order, spacing) is the same request
        reordered = b'{ "model": "gpt-4o",  "description": "%s" }' % FIX_DESCRIPTION.encode()
        same = await client.post(
            f"/api/sessions/{session['id']}/tasks",
            data=reordered,
            headers={**keyed(user, task_key), "Content-Type": "application/json"},
        )
        assert same.status == 201 and await same.read() == first_bytes
        assert await task_count(client, user, session["id"]) == 1


async def test_a_key_reused_for_another_request_is_refused(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(text="done")] * 4)
    async with serve(settings, openai_server) as client:
        user = await sign_up(client)
        session = await create_session(client, user, directory(tmp_path, "w"))
        key = "retry-1"
        await expect_json(await post_task(client, user, session["id"], key), 201)
        other = {**TASK, "description": "something else"}
        await expect_error(
            await post_task(client, user, session["id"], key, other), 422, "IDEMPOTENCY_KEY_REUSED"
        )
        await expect_error(  # the same key on another route
            await client.post(
                "/api/sessions",
                json={"name": "x", "working_directory": str(directory(tmp_path, "v"))},
                headers=keyed(user, key),
            ),
            422,
            "IDEMPOTENCY_KEY_REUSED",
        )
        assert await task_count(client, user, session["id"]) == 1
        sessions = await expect_json(await client.get("/api/sessions", headers=user.key))
        assert len(sessions) == 1


async def test_keys_are_per_user(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(text="done")] * 4)
    async with serve(settings, openai_server) as client:
        ada = await sign_up(client, "ada@example.com")
        bob = await sign_up(client, "bob@example.com", "Bob")
        ada_session = await create_session(client, ada, directory(tmp_path, "a"))
        bob_session = await create_session(client, bob, directory(tmp_path, "b"))
        first = await expect_json(await post_task(client, ada, ada_session["id"], "shared"), 201)
        second = await post_task(client, bob, bob_session["id"], "shared")
        theirs = await expect_json(second, 201)
        assert "Idempotent-Replayed" not in second.headers
        assert theirs["id"] != first["id"]
        assert await task_count(client, ada, ada_session["id"]) == 1
        assert await task_count(client, bob, bob_session["id"]) == 1


async def test_concurrent_requests_with_one_key_create_one_thing(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(text="done")] * 4)
    async with serve(settings, openai_server) as client:
        user = await sign_up(client)
        session = await create_session(client, user, directory(tmp_path, "w"))
        responses = await asyncio.gather(
            *(post_task(client, user, session["id"], "together") for _ in range(3))
        )
        bodies = [await expect_json(response, 201) for response in responses]
        assert bodies[0] == bodies[1] == bodies[2]
        replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
        assert sorted(replayed, key=str) == [None, "true", "true"], replayed
        assert await task_count(client, user, session["id"]) == 1


async def test_bad_keys_are_refused_and_no_key_changes_nothing(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(text="done")] * 4)
    async with serve(settings, openai_server) as client:
        user = await sign_up(client)
        session = await create_session(client, user, directory(tmp_path, "w"))
        for bad in ("", "x" * 256, "has space", "caf\u00e9"):
            response = await post_task(client, user, session["id"], bad)
            body = await expect_error(response, 422, "VALIDATION_ERROR")
            assert "Idempotency-Key" in body["detail"]
        await expect_json(await post_task(client, user, session["id"], "x" * 255), 201)
        assert await task_count(client, user, session["id"]) == 1
        for _ in range(2):  # without a key, every request creates
            response = await post_task(client, user, session["id"], None)
            await expect_json(response, 201)
            assert "Idempotent-Replayed" not in response.headers
        assert await task_count(client, user, session["id"]) == 3


async def test_errors_are_not_remembered(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(text="done")] * 4)
    async with serve(settings, openai_server) as client:
        user = await sign_up(client)
        session = await create_session(client, user, directory(tmp_path, "w"))
        missing = await post_task(client, user, str(uuid.uuid4()), "after-error")
        await expect_error(missing, 404, "NOT_FOUND")
        await expect_error(await post_task(client, user, session["id"], "after-error", {}), 422,
                           "VALIDATION_ERROR")  # fmt: skip
        created = await post_task(client, user, session["id"], "after-error")
        await expect_json(created, 201)
        assert "Idempotent-Replayed" not in created.headers


async def test_a_retried_api_key_answers_its_secret_again_never_stored_in_clear(
    settings: Settings, openai_server: ScriptedOpenAIServer
) -> None:
    async with serve(settings, openai_server) as client:
        user = await sign_up(client)
        key = "create-deploy-key-" + uuid.uuid4().hex
        headers = {**user.bearer, "Idempotency-Key": key}
        first = await expect_json(
            await client.post("/api/auth/api-keys", json={"name": "deploy"}, headers=headers), 201
        )
        again = await client.post("/api/auth/api-keys", json={"name": "deploy"}, headers=headers)
        assert await expect_json(again, 201) == first
        assert again.headers["Idempotent-Replayed"] == "true"
        keys = await expect_json(await client.get("/api/auth/api-keys", headers=user.bearer))
        assert sorted(k["name"] for k in keys) == ["ci", "deploy"]
        # the replayed secret works
        me = await client.get("/api/auth/api-keys", headers={"X-API-Key": first["key"]})
        await expect_json(me)
    with direct_database(settings) as db:
        rows = db.execute("SELECT user_id, key, fingerprint, body FROM idempotency_keys")
        dump = db.dump()
    assert len(rows) == 1 and rows[0][0] == user.id
    assert first["key"].encode() not in bytes(rows[0][3]) and first["key"].encode() not in dump
    assert key.encode() not in dump and b"deploy" not in bytes(rows[0][3])


async def test_a_replayed_resume_resumes_once(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(error_status=400), ScriptedTurn(text="done")])
    async with serve(settings, openai_server) as client:
        user = await sign_up(client)
        session = await create_session(client, user, directory(tmp_path, "w"))
        task = await expect_json(await post_task(client, user, session["id"], None), 201)

        async def status_is(status: str) -> bool:
            return (await get_task(client, user, task["id"]))["status"] == status

        await until(lambda: status_is("failed"), what="the task fails")
        path, headers = f"/api/tasks/{task['id']}/resume", keyed(user, "resume-1")
        first = await expect_json(await client.post(path, json={}, headers=headers), 202)
        again = await client.post(path, json={}, headers=headers)
        assert await expect_json(again, 202) == first
        assert again.headers["Idempotent-Replayed"] == "true"
        await until(lambda: status_is("completed"), what="the resumed task completes")
        assert len(openai_server.requests) == 2  # one run, one resume


async def test_expired_keys_are_forgotten_and_pruned(settings: Settings) -> None:
    store = open_store(settings)
    await store.open()
    try:
        now = time.time()
        user = await store.insert_user("ada@example.com", "Ada", None)
        day = 24 * 3600
        await store.remember_response(user.id, "old", "f", 201, b"x", now - day - 5, now - day)
        assert await store.remembered_response(user.id, "old", now - day) is None
        assert (await store.remembered_response(user.id, "old", now - 2 * day))["status"] == 201
        await store.remember_response(user.id, "new", "f", 201, b"y", now, now - day)
        assert await store.remembered_response(user.id, "old", 0) is None  # pruned
        assert (await store.remembered_response(user.id, "new", now - day))["body"] == b"y"
    finally:
        await store.close()


async def test_a_retried_input_is_delivered_once(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [
            ScriptedTurn(tool_calls=[("ask_user", {"question": "Proceed?"})]),
            ScriptedTurn(tool_calls=[("finish", {"summary": "ok", "success": True})]),
        ]
    )
    async with serve(settings, openai_server) as client:
        user = await sign_up(client)
        session = await create_session(client, user, directory(tmp_path, "w"))
        task = await expect_json(await post_task(client, user, session["id"], None), 201)

        async def status_is(status: str) -> bool:
            return (await get_task(client, user, task["id"]))["status"] == status

        await until(lambda: status_is("waiting_input"), what="the task asks")
        path, headers = f"/api/tasks/{task['id']}/input", keyed(user, "answer-1")
        answers = [await client.post(path, json={"content": "Yes"}, headers=headers)]
        await until(lambda: status_is("completed"), what="the task completes")
        answers.append(await client.post(path, json={"content": "Yes"}, headers=headers))
        assert [await expect_json(answer, 202) for answer in answers] == [
            {"id": task["id"], "delivered": True}
        ] * 2
        assert answers[1].headers["Idempotent-Replayed"] == "true"  # (not 409: not running)
        said = [m for r in openai_server.requests for m in r["messages"] if m["content"] == "Yes"]
        assert len(said) == 1
