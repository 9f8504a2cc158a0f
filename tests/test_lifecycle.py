"""Idle actors stop and come back; threads and subscribers return to their baseline."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until

from minidevin.api import Runtime
from minidevin.runtime.hub import SlowSubscriber
from minidevin.runtime.settings import Settings

FINISH = ScriptedTurn(tool_calls=[("finish", {"summary": "done"})])


def make_settings(tmp_path: Path, database_url: str | None, **overrides: Any) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path.with_name(tmp_path.name + "-data"),
        jwt_secret="l" * 40,
        **overrides,
    )


def env(server: ScriptedOpenAIServer) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": server.base_url}


async def test_idle_session_actors_stop_and_come_back(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    openai_server.script([FINISH, FINISH])
    settings = make_settings(tmp_path, database_url, session_idle_seconds=0.2)
    async with Runtime(settings, provider_env=env(openai_server)) as runtime:
        baseline = threading.active_count()
        session = await runtime.create_session("s", tmp_path)
        first = await runtime.create_task(session.id, "one")
        assert (await runtime.wait(first.id)).status == "completed"
        await until(lambda: runtime.live_session_actors == 0, what="the idle actor to stop")
        await until(
            lambda: threading.active_count() <= baseline,
            what=f"threads back to {baseline}: {threading.enumerate()}",
        )
        second = await runtime.create_task(session.id, "two")
        assert (await runtime.wait(second.id)).status == "completed"
        assert runtime.live_session_actors == 1


async def test_threads_return_to_baseline_after_many_tasks(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    openai_server.responder = lambda body: (
        ScriptedTurn(tool_calls=[("terminal", {"command": "true"})])
        if len(body["messages"]) == 2
        else FINISH
    )
    settings = make_settings(
        tmp_path, database_url, session_idle_seconds=0.1, max_concurrent_tasks=20
    )
    async with Runtime(settings, provider_env=env(openai_server)) as runtime:
        baseline = threading.active_count()
        sessions = [await runtime.create_session(f"s{i}", tmp_path) for i in range(20)]
        tasks = [await runtime.create_task(s.id, "go") for s in sessions]
        peak = threading.active_count()
        details = await asyncio.gather(*(runtime.wait(t.id) for t in tasks))
        assert {d.status for d in details} == {"completed"}
        await until(
            lambda: threading.active_count() <= baseline,
            timeout=15,
            what=f"threads back to {baseline} (peak {peak})",
        )
        assert runtime.hub.subscriber_count() == 0


async def test_a_subscriber_that_stops_reading_is_cut_off_without_slowing_the_task(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    openai_server.script([ScriptedTurn(text=" ".join(["word"] * 300)), FINISH])
    # (one event a delta: 300 of them, uncoalesced, overflow the queue)
    settings = make_settings(tmp_path, database_url, subscriber_queue_size=20, token_coalesce_ms=0)
    async with Runtime(settings, provider_env=env(openai_server)) as runtime:
        session = await runtime.create_session("s", tmp_path)
        task = await runtime.create_task(session.id, "talk a lot")
        stalled = runtime.events(task.id)
        first = await anext(stalled)  # subscribed, then never reads again
        reader = [event async for event in runtime.events(task.id)]
        assert reader[-1].is_final  # the task and the healthy reader were not held back
        seen = [first]
        try:
            async for event in stalled:
                seen.append(event)
        except SlowSubscriber:
            pass
        else:
            raise AssertionError("the stalled subscriber should have been cut off")
        resumed = [e async for e in runtime.events(task.id, after=seen[-1].seq)]
        assert [e.seq for e in seen + resumed] == [e.seq for e in reader]
