"""`/api/secrets`: values go in, never out; encrypted at rest; each user's own."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet
from http_helpers import expect_json, sign_up

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.auth import SecretFileError
from minidevin.runtime.settings import Settings

VALUE = "sk-live-" + "7" * 40


def _settings(data_dir: Path, database_url: str | None, **fields: Any) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        jwt_secret="s" * 40,
        rate_limit_authenticated=0,
        rate_limit_anonymous=0,
        rate_limit_login=0,
        **fields,
    )


async def test_secrets_are_stored_listed_replaced_and_deleted_without_showing_a_value(
    aiohttp_client: Any, tmp_path: Path, database_url: str | None
) -> None:
    data = tmp_path / "data"
    client: TestClient = await aiohttp_client(create_app(Runtime(_settings(data, database_url))))
    ada = await sign_up(client)
    created = await expect_json(
        await client.post(
            "/api/secrets", json={"name": "API_TOKEN", "value": VALUE}, headers=ada.bearer
        ),
        201,
    )
    assert created["name"] == "API_TOKEN" and "value" not in created
    replaced = await expect_json(
        await client.post(
            "/api/secrets", json={"name": "API_TOKEN", "value": VALUE + "x"}, headers=ada.bearer
        ),
        201,
    )
    assert replaced["created_at"] == created["created_at"]
    listed = await expect_json(await client.get("/api/secrets", headers=ada.bearer), 200)
    assert listed == [replaced] and VALUE not in str(listed)
    # at rest: encrypted (neither the value nor its base64 is in the database's bytes),
    # under a key file only the server can read
    database = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("minidevin"))
    assert VALUE.encode() not in database and base64.b64encode(VALUE.encode()) not in database
    assert stat.S_IMODE(os.stat(data / "secrets_key").st_mode) == 0o600
    assert (await client.delete("/api/secrets/API_TOKEN", headers=ada.bearer)).status == 204
    assert (await client.delete("/api/secrets/API_TOKEN", headers=ada.bearer)).status == 404
    assert await expect_json(await client.get("/api/secrets", headers=ada.bearer), 200) == []


async def test_a_users_secrets_are_theirs_alone(
    aiohttp_client: Any, tmp_path: Path, database_url: str | None
) -> None:
    client: TestClient = await aiohttp_client(
        create_app(Runtime(_settings(tmp_path / "d", database_url)))
    )
    ada, bob = await sign_up(client), await sign_up(client, "bob@example.com", "Bob")
    body = {"name": "SHARED_NAME", "value": VALUE}
    await expect_json(await client.post("/api/secrets", json=body, headers=ada.bearer), 201)
    assert await expect_json(await client.get("/api/secrets", headers=bob.bearer), 200) == []
    assert (await client.delete("/api/secrets/SHARED_NAME", headers=bob.bearer)).status == 404
    listed = await expect_json(await client.get("/api/secrets", headers=ada.bearer), 200)
    assert [s["name"] for s in listed] == ["SHARED_NAME"]


async def test_bad_names_and_values_are_422(
    aiohttp_client: Any, tmp_path: Path, database_url: str | None
) -> None:
    client: TestClient = await aiohttp_client(
        create_app(Runtime(_settings(tmp_path / "d", database_url)))
    )
    ada = await sign_up(client)
    for body in (
        {"name": "lower", "value": "v"},
        {"name": "1DIGIT", "value": "v"},
        {"name": "WITH-DASH", "value": "v"},
        {"name": "OK", "value": ""},
        {"name": "OK"},
    ):
        response = await client.post("/api/secrets", json=body, headers=ada.bearer)
        error = await expect_json(response, 422)
        assert set(error) == {"detail", "code", "timestamp"}
    assert (await client.get("/api/secrets")).status == 401


async def test_values_open_across_restarts_with_the_same_key_only(
    tmp_path: Path, database_url: str | None
) -> None:
    key = Fernet.generate_key().decode()
    settings = _settings(tmp_path / "d", database_url, secrets_key=key)
    async with Runtime(settings) as runtime:
        user = await runtime.owner(None)
        await runtime.secrets.put(user, "TOKEN", VALUE)
    async with Runtime(settings) as runtime:
        assert await runtime.secrets.values(await runtime.owner(None), ["TOKEN"]) == {
            "TOKEN": VALUE
        }
    assert not (tmp_path / "d" / "secrets_key").exists()  # the configured key is not written


async def test_a_damaged_key_file_stops_the_start_naming_it(
    tmp_path: Path, database_url: str | None
) -> None:
    data = tmp_path / "d"
    async with Runtime(_settings(data, database_url)):
        pass
    (data / "secrets_key").write_bytes(b"")
    try:
        async with Runtime(_settings(data, database_url)):
            raise AssertionError("started with an empty secrets key")
    except SecretFileError as exc:
        assert "secrets_key" in str(exc)


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "GCONV_PATH", "PATH",
                                  "BASH_ENV", "MINIDEVIN_TASK_ID", "GLIBC_TUNABLES"])  # fmt: skip
def test_names_that_change_how_programs_start_cannot_be_secrets(name: str) -> None:
    from pydantic import ValidationError

    from minidevin.runtime.schemas import SecretRequest
    from minidevin.runtime.tools.environment import user_variables

    with pytest.raises(ValidationError):
        SecretRequest(name=name, value="/tmp/evil.so")
    # one stored before the rule is left out of a command's environment
    assert user_variables({name: "/tmp/evil.so", "API_TOKEN": "x" * 8}) == {"API_TOKEN": "x" * 8}


async def test_a_changed_secrets_key_refuses_cleanly_and_stores_nothing(
    tmp_path: Path, database_url: str | None
) -> None:
    from minidevin.runtime.secrets_store import SecretUnreadable

    work = tmp_path / "w"
    work.mkdir()
    servers = [{"name": "fx", "command": "true", "env": {"TOKEN": "t" * 12}}]
    settings = _settings(tmp_path / "d", database_url, secrets_key=Fernet.generate_key().decode())
    async with Runtime(settings) as runtime:
        session = await runtime.create_session("s", work, mcp_servers=servers)
    settings = settings.model_copy(update={"secrets_key": Fernet.generate_key().decode()})
    async with Runtime(settings) as runtime:
        with pytest.raises(SecretUnreadable) as refused:
            await runtime.create_task(session.id, "go", model="replay:none")
        assert refused.value.status == 503 and refused.value.code == "SECRETS_UNREADABLE"
        with pytest.raises(SecretUnreadable):
            await runtime.session_tools(session.id)
        assert await runtime.list_tasks(session.id) == []  # nothing left queued
