"""`GET /metrics`: Prometheus text a real server gives after a real task, its token, and
that the API's rate limits never count it.

A real aiohttp server on 127.0.0.1, the scripted provider over real HTTP, the
text read with `prometheus_client`'s own parser. Counters and histograms are
process-wide (other tests' tasks count too): checked as differences; the
runtime's gauges are its own: checked exactly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient
from http_helpers import (
    GatedModel,
    create_session,
    create_task,
    expect_error,
    is_final,
    read_until,
    read_until_closed,
    serve,
    sign_up,
    ws_path,
)
from prometheus_client.parser import text_string_to_metric_families
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from waiting import fresh_minute, until

from minidevin.runtime.settings import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DESCRIPTION = "Say hello from the shell"
TOKEN = "metrics-token-" + "x" * 24


async def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of `/metrics`, by (name, labels); the text must parse as Prometheus'."""
    response = await client.get("/metrics", headers=headers or {})
    text = await response.text()
    assert response.status == 200, text
    assert response.content_type == "text/plain", response.content_type
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_task_shows_in_the_metrics(
    settings: Settings, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    model, gate = GatedModel(), asyncio.Event()
    hello = ScriptedTurn(text="Hello", tool_calls=[("terminal", {"command": "echo hi"})])
    model.add(DESCRIPTION, hello, gate)
    model.add(DESCRIPTION, finish("said hello"))
    openai_server.responder = model
    async with serve(settings, openai_server) as client:
        before = await scrape(client)  # public: no token is set
        assert value(before, "minidevin_websocket_subscribers") == 0
        user = await sign_up(client)
        session = await create_session(client, user, buggy_repo)
        task = await create_task(client, user, session["id"], DESCRIPTION)
        ws = await client.ws_connect(ws_path(task["id"], user.token))
        await read_until(ws, lambda m: m["type"] == "status" and m["status"] == "running")

        async def subscribed() -> Samples | None:
            now = await scrape(client)
            return now if value(now, "minidevin_websocket_subscribers") == 1 else None

        during = await until(subscribed, what="the subscriber gauge at 1")
        assert value(during, "minidevin_tasks", status="running") == 1
        assert value(during, "minidevin_actors") >= 2  # (session, task; its children may come)
        assert value(during, "minidevin_threads") >= value(during, "minidevin_actors")
        gate.set()
        messages = await read_until_closed(ws)
        await ws.close()
        assert is_final(messages[-1]) and messages[-1]["status"] == "completed"

        async def settled() -> Samples | None:  # (the socket's end is seen by the server next)
            now = await scrape(client)
            return now if value(now, "minidevin_websocket_subscribers") == 0 else None

        after = await until(settled, what="the subscriber gauge back at 0")

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "minidevin_tasks", status="completed") == 1
    assert grew("minidevin_tasks_started_total") >= 1
    assert grew("minidevin_tasks_ended_total", outcome="completed") >= 1
    assert grew("minidevin_tool_call_seconds_count", tool="terminal", outcome="success") >= 1
    assert grew("minidevin_tool_call_seconds_sum", tool="terminal", outcome="success") > 0
    # the scripted provider reports 10 prompt and 5 completion tokens a turn; two turns
    assert grew("minidevin_model_tokens_total", provider="openai", kind="prompt") >= 20
    assert grew("minidevin_model_tokens_total", provider="openai", kind="completion") >= 10
    assert grew("minidevin_model_cost_usd_total", provider="openai") > 0  # (gpt-4o has a price)
    assert grew("minidevin_model_turn_seconds_count", provider="openai", outcome="success") >= 2
    assert grew("minidevin_model_first_token_seconds_count", provider="openai") >= 1
    assert grew("minidevin_events_total", type="tool_result") >= 1
    assert grew("minidevin_events_total", type="status") >= 2
    assert grew("minidevin_store_batch_size_count") >= 1
    assert grew("minidevin_store_commit_seconds_count") >= 1
    assert value(after, "process_resident_memory_bytes") > 0


async def test_the_token_guards_the_metrics_when_set(
    settings: Settings, openai_server: ScriptedOpenAIServer
) -> None:
    async with serve(settings.model_copy(update={"metrics_token": TOKEN}), openai_server) as client:
        body = await expect_error(await client.get("/metrics"), 401, "UNAUTHORIZED")
        assert "MINIDEVIN_METRICS_TOKEN" in body["detail"]
        for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer ", TOKEN, "Bearer ü"):
            await expect_error(
                await client.get("/metrics", headers={"Authorization": wrong}), 401, "UNAUTHORIZED"
            )
        samples = await scrape(client, {"Authorization": f"Bearer {TOKEN}"})
        assert ("minidevin_websocket_subscribers", frozenset()) in samples


async def test_scrapes_are_never_rate_limited_and_refusals_are_counted(
    settings: Settings, openai_server: ScriptedOpenAIServer
) -> None:
    limited = settings.model_copy(update={"rate_limit_anonymous": 1})
    await fresh_minute()
    async with serve(limited, openai_server) as client:
        before = await scrape(client)
        for _ in range(5):  # over the anonymous limit of 1 a minute, were they counted
            await scrape(client)
        await expect_error(await client.get("/api/sessions"), 401, "UNAUTHORIZED")  # the 1
        refused = await client.get("/api/sessions")
        await expect_error(refused, 429, "RATE_LIMITED")
        assert "X-RateLimit-Limit" not in (await client.get("/metrics")).headers
        after = await scrape(client)
    counted = value(after, "minidevin_rate_limited_total", limit="addr")
    assert counted - value(before, "minidevin_rate_limited_total", limit="addr") == 1


def test_every_metric_is_named_for_minidevin_or_the_process() -> None:
    from prometheus_client import generate_latest

    from minidevin.runtime.metrics import REGISTRY

    names = {f.name for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    assert {n for n in names if not n.startswith(("minidevin_", "process_", "python_"))} == set()
    assert {"minidevin_tasks_started", "minidevin_rate_limited", "minidevin_events"} <= names
