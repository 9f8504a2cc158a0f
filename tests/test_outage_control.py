"""Steering a task while the store is down, on each backend: a stop takes effect at
once (its last events are held, never waited on), an input that cannot be logged
is not reported as delivered, and a task that cannot read its start ends clearly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from store_backends import Backend, backend  # noqa: F401 (the fixture)
from waiting import until

from minidevin.api import Runtime


async def test_a_stop_during_an_outage_takes_effect_at_once(
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
    backend: Backend,  # noqa: F811
) -> None:
    text = " ".join(f"w{i}" for i in range(3000))
    openai_server.script([ScriptedTurn(text=text, chunk_delay=0.002), finish()])
    settings = backend.settings(jwt_secret="o" * 40, store_retry_seconds=60)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_server.base_url}
    async with Runtime(settings, provider_env=env) as runtime:
        session = await runtime.create_session("s", tmp_path)
        task = await runtime.create_task(session.id, "talk")
        stream = runtime.events(task.id)
        seen = [await anext(stream) for _ in range(8)]
        with backend.write_lock_held():
            # down: from now on the task's next event waits (its stream is not read on)
            await until(lambda: runtime.store.outage.down, what="the outage")
            stop = asyncio.ensure_future(runtime.stop_task(task.id))

            def stopped() -> bool:
                return any(e.is_final for e in runtime.store.held)

            # the task ends now, well inside the window: its last events join the held ones
            await until(stopped, what="the final status held")
            assert not stop.done()  # (answered once its final status is committed)
        assert (await stop).status == "stopped"
        seen += [event async for event in stream]
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].type == "status" and seen[-1].data["status"] == "stopped"
    spoken = "".join(e.data["content"] for e in seen if e.type == "token")
    assert text.startswith(spoken) and spoken != text


async def test_past_the_window_a_queued_task_ends_clearly_and_an_answer_is_not_taken(
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
    backend: Backend,  # noqa: F811
) -> None:
    question = ScriptedTurn(tool_calls=[("ask_user", {"question": "Which file?"})])
    talk = ScriptedTurn(text=" ".join(f"w{i}" for i in range(3000)), chunk_delay=0.002)
    openai_server.script([question, talk])
    settings = backend.settings(jwt_secret="o" * 40, store_retry_seconds=0.5)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_server.base_url}
    async with Runtime(settings, provider_env=env) as runtime:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        asking = await runtime.create_task(
            (await runtime.create_session("a", tmp_path / "a")).id, "ask"
        )

        async def waiting() -> bool:
            return (await runtime.get_task(asking.id)).status == "waiting_input"

        await until(waiting, what="the question asked")
        session = await runtime.create_session("b", tmp_path / "b")
        talking = await runtime.create_task(session.id, "talk")
        queued = await runtime.create_task(session.id, "wait your turn")
        assert queued.status == "queued"
        stream = runtime.events(talking.id)
        while (await anext(stream)).type != "token":
            pass
        with backend.write_lock_held():
            await until(lambda: runtime.hub.store_down is not None, what="the window to pass")
            # the answer cannot be logged: it is not reported as delivered
            assert await runtime.send_input(asking.id, "main.py") is False

            def ended(task_id: str) -> bool:
                return any(e.task_id == task_id and e.is_final for e in runtime.store.held)

            # the talking task gave up; the queued one started and could not read its start
            await until(lambda: ended(talking.id) and ended(queued.id), what="both ended")
        ends = [await runtime.wait(t.id) for t in (asking, talking, queued)]
        logs = [[e async for e in runtime.events(t.id)] for t in (asking, talking, queued)]
    assert [end.status for end in ends] == ["failed"] * 3
    for log in logs:
        assert [e.data["code"] for e in log if e.type == "error"] == ["STORE_UNAVAILABLE"]
    assert not any(e.type == "tool_result" for e in logs[0])  # the answer was not logged
