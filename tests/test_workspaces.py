"""Working directories belong to their tenant, through the real HTTP server.

One answer (403, FORBIDDEN, "working_directory is not available") for a missing
directory and for every forbidden one; a directory is its first user's; a root-owned
one is handed to the sandbox uid; a directory swapped for a link after the session
was opened fails the next task, a queued task, and a tool call.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_helpers import (
    GatedModel,
    User,
    create_session,
    expect_error,
    expect_json,
    serve,
    sign_up,
    stream,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.api import Runtime
from minidevin.runtime.settings import Settings
from minidevin.runtime.snapshots import Snapshots

NOT_AVAILABLE = "working_directory is not available"
FINISH = ScriptedTurn(tool_calls=[("finish", {"summary": "done", "success": True})])


def settings_for(tmp_path: Path, database_url: str | None, **overrides: Any) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        jwt_secret="w" * 40,
        rate_limit_authenticated=0,
        rate_limit_anonymous=0,
        rate_limit_login=0,
        allow_unsandboxed_multiuser=True,  # two users on a machine without bwrap too
        sandbox="off",
        **overrides,
    )


@asynccontextmanager
async def server(
    tmp_path: Path,
    database_url: str | None,
    responder: Callable[..., Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[TestClient]:
    async with (
        ScriptedOpenAIServer(responder=responder) as model,
        serve(settings_for(tmp_path, database_url, **overrides), model) as client,
    ):
        yield client


async def open_session(client: TestClient, user: User, directory: Path | str) -> Any:
    return await client.post(
        "/api/sessions", json={"name": "s", "working_directory": str(directory)}, headers=user.key
    )


async def refused(client: TestClient, user: User, directory: Path | str) -> dict[str, Any]:
    body = await expect_error(await open_session(client, user, directory), 403, "FORBIDDEN")
    assert body["detail"] == NOT_AVAILABLE, (directory, body)
    return body


async def new_task(client: TestClient, user: User, session_id: str, description: str) -> Any:
    return await client.post(
        f"/api/sessions/{session_id}/tasks",
        json={"description": description, "model": "gpt-4o"},
        headers=user.key,
    )


async def test_forbidden_directories_answer_like_a_missing_one(
    tmp_path: Path, database_url: str | None
) -> None:
    data = tmp_path / "data"
    (tmp_path / "a-file").write_text("x")
    async with server(tmp_path, database_url) as client:
        ada = await sign_up(client)
        (data / "inside").mkdir()
        for directory in (
            tmp_path / "missing",
            tmp_path / "a-file",
            data,
            data / "inside",
            tmp_path,  # the data directory's parent
            "/",
            "/etc",
            "/proc/self",
            "/usr/lib",
            "/tmp",
            "/home",
            "/root",
            "/var",
            sys.prefix,  # the interpreter's installation
            Path(__file__).resolve().parent.parent / "minidevin",  # the server's own code
            f"{data}/../data",  # resolved before it is checked
        ):
            await refused(client, ada, directory)
        assert (await expect_json(await client.get("/api/sessions", headers=ada.key))) == []


async def test_with_roots_a_root_itself_and_anything_outside_are_refused(
    tmp_path: Path, database_url: str | None
) -> None:
    root = tmp_path / "root"
    (root / "ada" / "w1").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sneaky").symlink_to(outside)
    async with server(tmp_path, database_url, workspace_roots=(root,)) as client:
        ada = await sign_up(client)
        for directory in (root, outside, root / "sneaky", root / "missing", f"{root}/ada/../.."):
            await refused(client, ada, directory)
        session = await create_session(client, ada, root / "ada" / "w1")
        assert session["working_directory"] == str((root / "ada" / "w1").resolve())


async def test_a_directory_belongs_to_its_first_user(
    tmp_path: Path, database_url: str | None
) -> None:
    work = tmp_path / "work"
    project = work / "ada" / "project"
    (project / "src").mkdir(parents=True)
    async with server(tmp_path, database_url) as client:
        ada = await sign_up(client, "ada@example.com")
        bob = await sign_up(client, "bob@example.com", "Bob")
        first = await create_session(client, ada, project)
        for directory in (project, project / "src", work / "ada", work):
            await refused(client, bob, directory)  # on it, inside it, containing it
        second = await create_session(client, ada, project)  # the owner: as often as she likes
        # not inside or around her own: a task there could swap the other's directory
        for directory in (project / "src", work / "ada"):
            await refused(client, ada, directory)
        for session in (first, second):
            response = await client.delete(f"/api/sessions/{session['id']}", headers=ada.key)
            assert response.status == 204
        await refused(client, bob, project)  # the claim outlives the sessions
        (tmp_path / "bobs").mkdir()
        await create_session(client, bob, tmp_path / "bobs")


async def test_a_tenant_without_roots_gets_temporary_directories_only(
    tmp_path: Path, database_url: str | None
) -> None:
    """Without roots, a tenant cannot claim (and so take over) a host directory of root's
    such as `/root/.config` or `/var/lib/dpkg`, nor run as another local user."""
    others = tmp_path / "others"
    others.mkdir()
    os.chown(others, 4242, 4242)  # a local user's directory
    hidden = tmp_path / ".cache"
    hidden.mkdir()
    outside_tmp = Path(tempfile.mkdtemp(dir="/var/tmp" if os.path.isdir("/var/tmp") else "/"))
    try:
        async with server(tmp_path, database_url) as client:
            ada = await sign_up(client)
            for directory in (others, hidden, outside_tmp, "/var/lib", "/root/.config"):
                await refused(client, ada, directory)
            (tmp_path / "fine").mkdir()
            await create_session(client, ada, tmp_path / "fine")
    finally:
        outside_tmp.rmdir()


async def test_the_local_user_may_open_any_directory_not_forbidden(
    tmp_path: Path, database_url: str | None
) -> None:
    """`minidevin run` on your own checkout: the local user is the machine's operator."""
    others = tmp_path / "others"
    others.mkdir()
    os.chown(others, 4242, 4242)
    async with Runtime(settings_for(tmp_path, database_url)) as runtime:
        session = await runtime.create_session("mine", others)
        assert session.working_directory == str(others)


async def test_racing_users_cannot_both_claim_a_directory(
    tmp_path: Path, database_url: str | None
) -> None:
    project = tmp_path / "work" / "project"
    project.mkdir(parents=True)
    async with server(tmp_path, database_url) as client:
        users = [await sign_up(client, f"u{n}@example.com", f"U{n}") for n in range(4)]
        answers = await asyncio.gather(*(open_session(client, u, project) for u in users))
        assert sorted(answer.status for answer in answers) == [201, 403, 403, 403]


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a directory over needs root")
async def test_a_root_owned_directory_is_handed_to_the_sandbox_uid(
    tmp_path: Path, database_url: str | None
) -> None:
    project = tmp_path / "work" / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "mod.py").write_text("x = 1\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("root's\n")
    (project / "link").symlink_to(outside)
    os.link(outside, project / "hard")  # a hard link may be a file elsewhere: left alone
    async with server(tmp_path, database_url, sandbox_uid=54321) as client:
        ada = await sign_up(client)
        await create_session(client, ada, project)
    for path in (project, project / "pkg", project / "pkg" / "mod.py"):
        assert (path.stat().st_uid, path.stat().st_gid) == (54321, 54321), path
    assert (project / "link").lstat().st_uid == 54321
    assert outside.stat().st_uid == 0 and (project / "hard").stat().st_uid == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a directory over needs root")
async def test_a_directory_owned_by_someone_is_not_handed_over(
    tmp_path: Path, database_url: str | None
) -> None:
    project = tmp_path / "work" / "project"
    project.mkdir(parents=True)
    (project / "f").write_text("")
    os.chown(project, 4242, 4242)
    # (inside a workspace root: the operator placed it; a tenant is refused it otherwise)
    async with server(
        tmp_path, database_url, sandbox_uid=54321, workspace_roots=(tmp_path / "work",)
    ) as client:
        await create_session(client, await sign_up(client), project)
    assert project.stat().st_uid == 4242 and (project / "f").stat().st_uid == 0


def swap_for_link(directory: Path, target: Path) -> None:
    """What a hostile task would do: move the directory away and put a link there."""
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target)


async def test_a_swapped_or_replaced_directory_fails_task_creation(
    tmp_path: Path, database_url: str | None
) -> None:
    root = tmp_path / "root"
    for name in ("w1", "w2"):
        (root / "bob" / name).mkdir(parents=True)
    async with server(tmp_path, database_url, workspace_roots=(root,)) as client:
        bob = await sign_up(client)
        linked = await create_session(client, bob, root / "bob" / "w1")
        replaced = await create_session(client, bob, root / "bob" / "w2")
        swap_for_link(root / "bob" / "w1", tmp_path / "data")
        (root / "bob" / "w2").rename(root / "bob" / "w2.old")
        (root / "bob" / "w2").mkdir()  # the same path, another directory
        for session in (linked, replaced):
            response = await new_task(client, bob, session["id"], "look around")
            body = await expect_error(response, 400, "WORKSPACE_CHANGED")
            assert "create a new session" in body["detail"], body


async def test_a_queued_task_whose_directory_was_swapped_fails_when_it_starts(
    tmp_path: Path,
    database_url: str | None,
) -> None:
    gate = asyncio.Event()
    model = GatedModel()
    model.add("hold the slot", FINISH, gate)
    root = tmp_path / "root"
    for name in ("busy", "victim"):
        (root / "bob" / name).mkdir(parents=True)
    async with server(
        tmp_path, database_url, model, workspace_roots=(root,), max_concurrent_tasks=1
    ) as client:
        bob = await sign_up(client)
        busy = await create_session(client, bob, root / "bob" / "busy")
        victim = await create_session(client, bob, root / "bob" / "victim")
        holder = await expect_json(await new_task(client, bob, busy["id"], "hold the slot"), 201)
        queued = await expect_json(await new_task(client, bob, victim["id"], "never runs"), 201)
        assert queued["status"] == "queued"
        swap_for_link(root / "bob" / "victim", Path("/"))
        gate.set()
        events, _ = await stream(client, queued["id"], bob.token)
        assert (await stream(client, holder["id"], bob.token))[0][-1]["status"] == "completed"
    errors = [event for event in events if event["type"] == "error"]
    assert [error["code"] for error in errors] == ["WORKSPACE_CHANGED"], events
    assert "not the directory this session was created on" in errors[0]["error"]
    assert events[-1]["status"] == "failed"
    assert model.calls == ["hold the slot"]  # the swapped task never reached the model


async def test_a_tool_call_after_the_directory_was_swapped_fails(
    tmp_path: Path, database_url: str | None
) -> None:
    root = tmp_path / "root"
    workspace = root / "bob" / "w1"
    workspace.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    turns = iter(
        [
            lambda: (
                swap_for_link(workspace, outside)
                or ScriptedTurn(
                    tool_calls=[
                        ("editor", {"command": "create", "path": "x.txt", "file_text": "x"})
                    ]
                )
            ),
            lambda: ScriptedTurn(tool_calls=[("terminal", {"command": "touch y.txt"})]),
            lambda: FINISH,
        ]
    )

    def responder(body: dict[str, Any]) -> ScriptedTurn:
        return next(turns)()  # the first turn swaps the directory while the task runs

    async with server(tmp_path, database_url, responder, workspace_roots=(root,)) as client:
        bob = await sign_up(client)
        session = await create_session(client, bob, workspace)
        task = await expect_json(await new_task(client, bob, session["id"], "edit"), 201)
        events, _ = await stream(client, task["id"], bob.token)
    results = [event for event in events if event["type"] == "tool_result"]
    assert [result["tool"] for result in results] == ["editor", "terminal", "finish"], events
    for result in results[:2]:
        assert result["success"] is False
        assert "not the directory this session was created on" in result["output"]
    assert list(outside.iterdir()) == []


def test_snapshots_run_no_git_config_but_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's git reads a tenant's tree: a filter in a config it would read (here
    the server user's global one) must never run, as root, outside the sandbox."""
    home = tmp_path / "home"
    home.mkdir()
    ran = tmp_path / "filter-ran"
    (home / ".gitconfig").write_text(f'[filter "x"]\n\tclean = touch {ran}; cat\n')
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    (work / ".gitattributes").write_text("* filter=x\n")
    (work / "a.txt").write_text("a\n")
    snapshots = Snapshots(work, tmp_path / "snap.git")
    before = snapshots.take()
    (work / "a.txt").write_text("b\n")
    assert "+b" in snapshots.diff(before, snapshots.take())
    assert not ran.exists()
