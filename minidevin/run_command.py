"""`minidevin run`: one task, in-process through the embedding API, shown live.

Streams the model's text, each tool call and a shortened result, the plan when
it changes, status changes, then a summary and the diff stat. Questions from
`ask_user` are answered from stdin. Ctrl-C stops the task (status `stopped`)
and exits 130; otherwise the exit code is 0 when the task completed with
success, 1 when not, 2 when it could not start (a bad directory, model, setting,
or a task to resume that is unknown or not failed/stopped). `--json` prints one
event per line and nothing else.

`--resume TASK_ID` continues a failed or stopped task of the data directory
instead of creating one (`Runtime.resume_task`): it shows the events the task
adds from there on, then the same summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from minidevin.api import Runtime
from minidevin.resume import RESUMABLE
from minidevin.run_view import HumanView, JsonView
from minidevin.runtime.errors import ApiError
from minidevin.runtime.hub import SlowSubscriber
from minidevin.runtime.settings import Settings, SettingsError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
NO_ANSWER = "The user cannot answer (stdin is closed); proceed with your best judgement."


def run_command(args: argparse.Namespace) -> int:
    """Entry point of `minidevin run` (arguments as `cli.py` parses them)."""
    from minidevin.runtime.logging import configure_logging

    # one task runs here: the server's interrupted tasks are resumed by `serve`, not by it
    overrides: dict[str, Any] = {"resume_interrupted": False}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        print(f"minidevin: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging("warning", settings.log_format)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    try:
        run = TaskRun(
            settings,
            args.task or "",
            args.dir or "",
            args.model,
            args.max_iterations,
            args.json,
            resume=args.resume,
            message=args.message,
            max_cost_usd=args.max_cost_usd,
            approval_policy=args.approval_policy,
        )
        return asyncio.run(run.main())
    except KeyboardInterrupt:  # before the loop's handler was installed
        return EXIT_INTERRUPTED
    finally:
        import pykka

        pykka.ActorRegistry.stop_all(block=True, timeout=10)


def default_help(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What `--model` and `--max-iterations` default to here, for `minidevin run --help`."""
    from minidevin.runtime.providers.registry import DEFAULT_ORDER, REQUIRED_ENV, ProviderRegistry

    environ = os.environ if environ is None else environ
    try:
        settings = Settings.from_env(environ)
    except SettingsError as exc:
        return {"model": f"default unknown: {exc}", "max_iterations": ""}
    if settings.default_model:
        model = f"default: {settings.default_model}, from MINIDEVIN_DEFAULT_MODEL"
    else:
        registry = ProviderRegistry(environ, azure_deployments=settings.azure_deployments)
        configured = [
            (models[0].id, REQUIRED_ENV[name])
            for name in DEFAULT_ORDER
            if name in REQUIRED_ENV
            and registry.configured(name)
            and (models := registry.models(name))
        ]
        if configured:
            first, variables = configured[0]
            verb = "are" if variables[1:] else "is"
            model = f"default: {first}, as {', '.join(variables)} {verb} set"
        else:
            model = "default: the first configured provider's first model, "
            model += "but no API key is set here (a running Ollama counts)"
        model += "; MINIDEVIN_DEFAULT_MODEL sets another"
    iterations = f"default: {settings.max_iterations}"
    if environ.get("MINIDEVIN_MAX_ITERATIONS"):
        iterations += ", from MINIDEVIN_MAX_ITERATIONS"
    else:
        iterations += "; MINIDEVIN_MAX_ITERATIONS sets another"
    return {"model": model, "max_iterations": iterations}


class TaskRun:
    """One `minidevin run`: creates the session and task, follows and shows its events."""

    def __init__(
        self,
        settings: Settings,
        description: str,
        directory: str,
        model: str | None,
        max_iterations: int | None,
        json_output: bool,
        out: TextIO | None = None,
        *,
        resume: str | None = None,
        message: str | None = None,
        max_cost_usd: float | None = None,
        approval_policy: str = "never",
    ) -> None:
        self.settings = settings
        self.approval_policy = approval_policy
        self.description = description
        self.directory = directory
        self.model = model
        self.max_iterations = max_iterations
        self.resume = resume  # the id of a task to continue, instead of a new one
        self.message = message
        self.max_cost_usd = max_cost_usd
        self.view = JsonView(out or sys.stdout) if json_output else HumanView(out or sys.stdout)
        self.task_id: str | None = None
        self.interrupts = 0
        self.stdin = StdinLines()
        self.runtime: Runtime
        self._background: set[asyncio.Task[Any]] = set()

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        try:
            # (a server's queued tasks wait for the server, not run here)
            async with Runtime(self.settings, restart_queue=False) as self.runtime:
                try:
                    return await self._run()
                finally:
                    for task in self._background:  # a question nobody needs answered now
                        task.cancel()
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    async def _run(self) -> int:
        after = 0  # the events shown start after this seq (a resumed task's new ones)
        try:
            if self.interrupts:
                return EXIT_INTERRUPTED
            if self.resume is not None:
                after = await self._resume(self.resume)
                task_id = self.resume
            else:
                name = f"run: {Path(self.directory).name or self.directory}"
                session = await self.runtime.create_session(
                    name,
                    self.directory,
                    approval_policy=self.approval_policy,  # type: ignore[arg-type]
                )
                task = await self.runtime.create_task(
                    session.id,
                    self.description,
                    model=self.model,
                    max_iterations=self.max_iterations,
                    max_cost_usd=self.max_cost_usd,
                )
                task_id = task.id
        except (ApiError, ValueError) as exc:  # a bad directory, model, setting or task id
            print(f"minidevin: {getattr(exc, 'detail', exc)}", file=sys.stderr)
            return EXIT_USAGE
        self.task_id = task_id
        if self.interrupts:
            self._spawn(self._stop())
        await self._follow(task_id, after)
        detail = await self.runtime.get_task(task_id)
        if isinstance(self.view, HumanView):
            self.view.summary(detail, await self._patch(task_id))
        if self.interrupts:
            return EXIT_INTERRUPTED
        success = detail.status == "completed" and detail.result is not None
        return EXIT_OK if success and detail.result.success else EXIT_FAILED

    async def _resume(self, task_id: str) -> int:
        """Continue the task; the seq of its last event before this run."""
        last = 0
        if (await self.runtime.get_task(task_id)).status in RESUMABLE:  # ended: history only
            async for event in self.runtime.events(task_id):
                last = event.seq
        await self.runtime.resume_task(
            task_id,
            message=self.message,
            max_iterations=self.max_iterations,
            max_cost_usd=self.max_cost_usd,
        )
        return last

    async def _follow(self, task_id: str, after: int = 0) -> None:
        """Show every event after `after` until the final status (again if cut off as slow)."""
        last = after
        while True:
            try:
                async for event in self.runtime.events(task_id, after=last):
                    last = event.seq
                    self.view.show(event)
                    if event.type == "status" and event.data.get("status") == "waiting_input":
                        self._spawn(self._answer(task_id))
                    elif event.type == "approval_request":
                        self._spawn(self._approve(task_id, event.data["call_id"]))
                return
            except SlowSubscriber:
                continue

    async def _answer(self, task_id: str) -> None:
        line = await self.stdin.readline()
        while line is not None and not line.strip():
            line = await self.stdin.readline()
        answer = NO_ANSWER if line is None else line.strip()
        self.view.answered(answer, echo=line is None or not _isatty(0))
        await self.runtime.send_input(task_id, answer)

    async def _approve(self, task_id: str, call_id: str) -> None:
        """`y` (or `yes`) approves; anything else rejects, a text as the reason."""
        line = await self.stdin.readline()
        answer = "" if line is None else line.strip()
        self.view.answered(answer or "n", echo=line is None or not _isatty(0))
        if answer.lower() in ("y", "yes"):
            decision, reason = "approve", None
        else:
            reason = answer if answer.lower() not in ("", "n", "no") else "rejected at the terminal"
            decision = "reject"
        with contextlib.suppress(ApiError):  # (the task ended meanwhile: nothing to decide)
            await self.runtime.decide_approval(task_id, call_id, decision, reason)

    async def _patch(self, task_id: str) -> str:
        for artifact in await self.runtime.list_artifacts(task_id):
            if artifact.name == "diff.patch":
                _, path = await self.runtime.artifact_file(task_id, artifact.id)
                return path.read_text(encoding="utf-8", errors="replace")
        return ""

    def _on_sigint(self) -> None:
        self.interrupts += 1
        if self.interrupts > 1:
            print("\nminidevin: interrupted again, exiting now", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
        print("\nminidevin: stopping the task (Ctrl-C again to force)", file=sys.stderr, flush=True)
        if self.task_id is not None:
            self._spawn(self._stop())

    async def _stop(self) -> None:
        assert self.task_id is not None
        try:
            await self.runtime.stop_task(self.task_id)
        except Exception as exc:  # the final status still ends the run, or a second ^C
            print(f"minidevin: could not stop the task: {exc}", file=sys.stderr)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class StdinLines:
    """Lines of stdin, read by a daemon thread (raw fd reads, so exit never waits on it)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] | None = None

    async def readline(self) -> str | None:
        """The next line without its newline; None at end of input."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            thread = threading.Thread(target=self._pump, args=(loop, self._queue), daemon=True)
            thread.start()
        return await self._queue.get()

    @staticmethod
    def _pump(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
        def put(item: str | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(queue.put_nowait, item)

        buffer = b""
        while True:
            try:
                chunk = os.read(0, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                if buffer:
                    put(buffer.decode(errors="replace"))
                put(None)
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                put(line.decode(errors="replace").rstrip("\r"))


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
