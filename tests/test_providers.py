"""Providers through the runtime: azure and ollama wiring, retries, cost, long conversations."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from scripted_anthropic import ScriptedAnthropicServer
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.context import estimate_tokens, input_budget
from minidevin.runtime.errors import BadRequest
from minidevin.runtime.events import Event
from minidevin.runtime.providers.registry import ProviderRegistry
from minidevin.runtime.settings import Settings

FINISH = ScriptedTurn(tool_calls=[("finish", {"summary": "done", "success": True})])


def make_settings(tmp_path: Path, database_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path.with_name(tmp_path.name + "-data"),
        "jwt_secret": "s" * 40,
        "provider_retry_base_delay": 0.01,
        "rate_limit_authenticated": 0,
        "rate_limit_anonymous": 0,
    }
    return Settings(**{**values, **overrides})


def openai_env(server: ScriptedOpenAIServer) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-key-123", "OPENAI_BASE_URL": server.base_url}


async def run_task(runtime: Runtime, workdir: Path, **fields: Any) -> tuple[list[Event], Any]:
    session = await runtime.create_session("s", workdir)
    task = await runtime.create_task(session.id, "do it", **fields)
    events = [event async for event in runtime.events(task.id)]
    return events, await runtime.get_task(task.id)


# -- configuration and the catalog ------------------------------------------------------------


def test_configuration_follows_the_standard_environment_variables() -> None:
    registry = ProviderRegistry({"OPENAI_API_KEY": "k", "AZURE_OPENAI_API_KEY": "k"})
    assert registry.configured("openai") and not registry.configured("anthropic")
    assert registry.missing_settings("azure") == ["AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION"]
    assert registry.default_model() == "gpt-4o"
    assert ProviderRegistry({"ANTHROPIC_API_KEY": "k"}).default_model().startswith("claude")
    assert registry.resolve("openai/gpt-4o-mini").id == "gpt-4o-mini"
    assert registry.resolve("azure/prod-gpt").provider == "azure"


def test_azure_without_deployments_is_no_default_model() -> None:
    """Azure configured, no deployment listed, nothing else: the catalog's default,
    which a task then refuses as not configured (400), never an IndexError (500)."""
    azure = {
        "AZURE_OPENAI_API_KEY": "k",
        "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9",
        "OPENAI_API_VERSION": "2024-10-21",
    }
    registry = ProviderRegistry(azure)
    assert registry.configured("azure")
    assert registry.default_model() == "gpt-4o"


async def test_ollama_is_configured_only_when_its_server_answers(
    openai_server: ScriptedOpenAIServer,
) -> None:
    openai_server.ollama_models = ["llama3.2:latest", "qwen2.5-coder"]
    host = openai_server.base_url.removesuffix("/v1")
    registry = ProviderRegistry({"OLLAMA_HOST": host})
    await registry.refresh()
    assert registry.configured("ollama")
    assert [m.id for m in registry.models("ollama")] == [
        "ollama/llama3.2:latest",
        "ollama/qwen2.5-coder",
    ]
    silent = ProviderRegistry({"OLLAMA_HOST": "http://127.0.0.1:9"})
    await silent.refresh()
    assert not silent.configured("ollama") and silent.models("ollama") == []


async def test_azure_deployment_runs_through_the_azure_client(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    env = {
        "AZURE_OPENAI_API_KEY": "azure-key-123",
        "AZURE_OPENAI_ENDPOINT": openai_server.base_url.removesuffix("/v1"),
        "OPENAI_API_VERSION": "2024-10-21",
    }
    openai_server.script([FINISH])
    settings = make_settings(tmp_path, database_url, azure_deployments=("prod-gpt",))
    async with Runtime(settings, provider_env=env) as runtime:
        assert [m.id for m in runtime.providers.models("azure")] == ["azure/prod-gpt"]
        _, detail = await run_task(runtime, tmp_path, model="azure/prod-gpt")
    assert detail.status == "completed"
    assert openai_server.paths[0].startswith(
        "/openai/deployments/prod-gpt/chat/completions?api-version=2024-10-21"
    )
    assert openai_server.api_keys[0] == "azure-key-123"


async def test_ollama_model_runs_through_its_openai_compatible_endpoint(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    openai_server.ollama_models = ["llama3.2"]
    openai_server.script([FINISH])
    env = {"OLLAMA_HOST": openai_server.base_url.removesuffix("/v1")}
    async with Runtime(make_settings(tmp_path, database_url), provider_env=env) as runtime:
        _, detail = await run_task(runtime, tmp_path, model="ollama/llama3.2")
    assert detail.status == "completed"
    assert openai_server.requests[0]["model"] == "llama3.2"


async def test_an_unconfigured_provider_is_refused_naming_the_missing_setting(
    tmp_path: Path,
    database_url: str | None,
) -> None:
    async with Runtime(make_settings(tmp_path, database_url), provider_env={}) as runtime:
        session = await runtime.create_session("s", tmp_path)
        with pytest.raises(BadRequest) as refused:
            await runtime.create_task(session.id, "x", model="claude-3-5-sonnet-20241022")
    assert refused.value.code == "PROVIDER_NOT_CONFIGURED"
    assert "ANTHROPIC_API_KEY" in refused.value.detail


# -- retries ------------------------------------------------------------


async def test_rate_limit_is_retried_after_retry_after(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    limited = ScriptedTurn(error_status=429, headers={"Retry-After": "0.3"})
    openai_server.script([limited, FINISH])
    async with Runtime(
        make_settings(tmp_path, database_url), provider_env=openai_env(openai_server)
    ) as runtime:
        started = time.monotonic()
        events, detail = await run_task(runtime, tmp_path)
        elapsed = time.monotonic() - started
    assert detail.status == "completed" and len(openai_server.requests) == 2
    restart = next(e.data for e in events if e.type == "turn_restart")
    assert restart["code"] == "PROVIDER_RATE_LIMITED" and restart["attempt"] == 2
    assert restart["delay"] == pytest.approx(0.3)
    assert elapsed >= 0.3


async def test_a_stream_dropped_midway_restarts_the_turn_and_says_so(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    dropped = ScriptedTurn(text="one two three four five", drop_midway=True, drop_after=3)
    openai_server.script([dropped, ScriptedTurn(text="all good")])
    async with Runtime(
        make_settings(tmp_path, database_url), provider_env=openai_env(openai_server)
    ) as runtime:
        events, detail = await run_task(runtime, tmp_path)
    types = [e.type for e in events]
    restart = types.index("turn_restart")
    assert "token" in types[:restart]
    after = "".join(e.data["content"] for e in events[restart:] if e.type == "token")
    assert after == "all good" and detail.result.summary == "all good"


async def test_attempts_are_bounded_and_auth_errors_are_not_retried(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    openai_server.script([ScriptedTurn(error_status=500)] * 3)
    settings = make_settings(tmp_path, database_url, provider_max_attempts=3)
    async with Runtime(settings, provider_env=openai_env(openai_server)) as runtime:
        events, detail = await run_task(runtime, tmp_path)
        assert detail.status == "failed" and len(openai_server.requests) == 3
        assert events[-2].data["code"] == "PROVIDER_UNAVAILABLE"
        openai_server.script([ScriptedTurn(error_status=401)])
        events, detail = await run_task(runtime, tmp_path)
    assert events[-2].data["code"] == "PROVIDER_AUTH_FAILED" and len(openai_server.requests) == 4


# -- usage, cost, budget ------------------------------------------------------------


async def test_usage_and_cost_are_recorded_per_turn(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    work = ScriptedTurn(
        tool_calls=[("terminal", {"command": "true"})], prompt_tokens=1000, completion_tokens=100
    )
    openai_server.script(
        [work, ScriptedTurn(text="done", prompt_tokens=1000, completion_tokens=100)]
    )
    async with Runtime(
        make_settings(tmp_path, database_url), provider_env=openai_env(openai_server)
    ) as runtime:
        events, detail = await run_task(runtime, tmp_path, model="gpt-4o")
    usage_events = [e.data["usage"] for e in events if e.type == "usage"]
    assert usage_events[0] == {
        "prompt_tokens": 1000, "completion_tokens": 100, "cost_usd": 0.0035, "estimated": False
    }  # fmt: skip
    assert detail.usage.prompt_tokens == 2000 and detail.usage.cost_usd == pytest.approx(0.007)


async def test_crossing_the_budget_ends_the_task(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    pricey = ScriptedTurn(tool_calls=[("terminal", {"command": "touch ran"})], prompt_tokens=10_000)
    openai_server.script([pricey, FINISH])
    settings = make_settings(tmp_path, database_url, model_prices={"gpt-4o": (5.0, 20.0)})
    async with Runtime(settings, provider_env=openai_env(openai_server)) as runtime:
        events, detail = await run_task(runtime, tmp_path, model="gpt-4o", max_cost_usd=0.01)
    assert events[-2].data["code"] == "BUDGET_EXCEEDED"
    assert detail.status == "failed" and detail.max_cost_usd == 0.01
    assert not (tmp_path / "ran").exists(), "the turn that crossed the budget must not act"


# -- long conversations ------------------------------------------------------------


async def test_a_long_task_completes_in_a_tiny_context_window(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    noisy = f"{sys.executable} -c \"print('x' * 3000)\""
    turns = [ScriptedTurn(tool_calls=[("terminal", {"command": noisy})]) for _ in range(8)]
    openai_server.script([*turns, FINISH])
    settings = make_settings(tmp_path, database_url, context_windows={"gpt-4o": 2000})
    async with Runtime(settings, provider_env=openai_env(openai_server)) as runtime:
        _, detail = await run_task(runtime, tmp_path, model="gpt-4o")
        artifacts = {a.name: a for a in await runtime.list_artifacts(detail.id)}
        _, path = await runtime.artifact_file(detail.id, artifacts["trajectory.json"].id)
    assert detail.status == "completed" and detail.iterations == 9
    budget = input_budget(2000)
    sizes = [estimate_tokens(request["messages"]) for request in openai_server.requests]
    assert max(sizes) <= budget, sizes
    assert openai_server.requests[-1]["messages"][1]["content"] == "do it"  # the task is kept
    trajectory = json.loads(path.read_text())
    outputs = [m["content"] for m in trajectory["messages"] if m["role"] == "tool"]
    assert all("x" * 3000 in output for output in outputs[:8]), "the trajectory keeps it all"


async def test_an_anthropic_task_runs_through_the_messages_api(
    tmp_path: Path, database_url: str | None
) -> None:
    async with ScriptedAnthropicServer() as server:
        server.script(
            [
                ScriptedTurn(text="Let me look.", tool_calls=[("terminal", {"command": "true"})]),
                FINISH,
            ]
        )
        env = {"ANTHROPIC_API_KEY": "sk-ant-test-123", "ANTHROPIC_BASE_URL": server.base_url}
        async with Runtime(make_settings(tmp_path, database_url), provider_env=env) as runtime:
            events, detail = await run_task(runtime, tmp_path, model="claude-3-5-sonnet-20241022")
    assert detail.status == "completed" and detail.iterations == 2
    assert "".join(e.data["content"] for e in events if e.type == "token") == "Let me look."
    second = server.requests[1]
    assert second["system"].startswith("You are minidevin")
    assert second["messages"][-1]["content"][0]["type"] == "tool_result"


# -- the catalog over HTTP ------------------------------------------------------------


async def test_models_and_providers_endpoints(
    aiohttp_client: Any,
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
    database_url: str | None,
) -> None:
    openai_server.ollama_models = ["llama3.2"]
    env = {**openai_env(openai_server), "OLLAMA_HOST": openai_server.base_url.removesuffix("/v1")}
    runtime = Runtime(make_settings(tmp_path, database_url), provider_env=env)
    client = await aiohttp_client(create_app(runtime))
    user = {"email": "c@example.com", "password": "password123", "name": "C"}
    await client.post("/api/auth/register", json=user)
    login = await (await client.post("/api/auth/login", json=user)).json()
    auth = {"Authorization": f"Bearer {login['access_token']}"}

    models = (await (await client.get("/api/models", headers=auth)).json())["models"]
    assert {"gpt-4o", "claude-3-5-sonnet-20241022", "ollama/llama3.2"} <= {m["id"] for m in models}
    assert set(models[0]) == {
        "id",
        "name",
        "provider",
        "context_window",
        "supports_vision",
        "supports_function_calling",
    }
    only = await (await client.get("/api/models?provider=anthropic", headers=auth)).json()
    assert {m["provider"] for m in only["models"]} == {"anthropic"}
    bad = await client.get("/api/models?provider=nope", headers=auth)
    assert bad.status == 422 and (await bad.json())["code"] == "VALIDATION_ERROR"

    providers = await (await client.get("/api/providers", headers=auth)).json()
    by_id = {p["id"]: p for p in providers["providers"]}
    assert by_id["openai"]["configured"] and not by_id["anthropic"]["configured"]
    assert by_id["ollama"] == {
        "id": "ollama",
        "name": "Ollama",
        "configured": True,
        "models_count": 1,
    }
    assert providers["default_model"] == "gpt-4o"
