"""What the console's browser tests share: the scripted model's scenarios (picked by a tag
in the task's description, so tests run in any order against one model server), a real
`minidevin serve`, a Chromium driven by Playwright, and a page that records console errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from playwright.sync_api import Browser, ConsoleMessage, Page
from scripted_provider import ScriptedTurn, finish
from serve_process import ServeProcess

REPO = Path(__file__).resolve().parent.parent
BUGGY_CALC = REPO / "examples" / "buggy-calc"
PASSWORD = "correct horse battery"

RUN_TESTS = ("terminal", {"command": "python3 test_calc.py"})
FIX_MEAN = (
    "editor",
    {
        "command": "str_replace",
        "path": "calc.py",
        "old_str": "(len(values) + 1)",
        "new_str": "len(values)",
    },
)


def plan(*steps: tuple[str, str]) -> tuple[str, dict[str, Any]]:
    return ("plan", {"steps": [{"description": d, "status": s} for d, s in steps]})


STEPS = ("Run the tests", "Fix mean()", "Run the tests again")
SCENARIOS: dict[str, list[ScriptedTurn]] = {
    # the whole story: a plan, a command, a question, an edit, the plan ticked off, finish
    "story": [
        ScriptedTurn(
            text="I will run the tests first.",
            tool_calls=[
                plan((STEPS[0], "in_progress"), (STEPS[1], "pending"), (STEPS[2], "pending"))
            ],
        ),
        ScriptedTurn(tool_calls=[RUN_TESTS]),
        ScriptedTurn(tool_calls=[("ask_user", {"question": "mean() is off by one. Fix calc.py?"})]),
        ScriptedTurn(
            tool_calls=[
                plan((STEPS[0], "completed"), (STEPS[1], "in_progress"), (STEPS[2], "pending")),
                FIX_MEAN,
            ]
        ),
        ScriptedTurn(
            tool_calls=[
                plan((STEPS[0], "completed"), (STEPS[1], "completed"), (STEPS[2], "completed")),
                RUN_TESTS,
            ]
        ),
        finish("Fixed mean(): it divided by len(values) + 1."),
    ],
    # under the risky policy both commands wait: one is approved, one rejected
    "approvals": [
        ScriptedTurn(tool_calls=[("terminal", {"command": "touch approved.txt"})]),
        ScriptedTurn(tool_calls=[("terminal", {"command": "touch rejected.txt"})]),
        finish("One file made, one refused."),
    ],
    # a long command to stop; after the resume, finish
    "stop": [
        ScriptedTurn(tool_calls=[("terminal", {"command": "sleep 60"})]),
        finish("Resumed and finished."),
    ],
    # a question to wait on while the connection is dropped
    "reconnect": [
        ScriptedTurn(text="Let me ask first.", tool_calls=[("ask_user", {"question": "Ready?"})]),
        ScriptedTurn(tool_calls=[("terminal", {"command": "echo after the drop"})]),
        finish("Done after a reconnect."),
    ],
    "small": [
        ScriptedTurn(
            text="Listing the files.",
            tool_calls=[("terminal", {"command": "ls"}), ("terminal", {"command": "seq 1 40"})],
        ),
        finish("Listed them."),
    ],
}
# 97 turns x (45 streamed words + an editor view + a command + the turn's own events):
# over 5,000 events
LONG_TURNS = 97
WORDS = " ".join(f"word{n}" for n in range(45))
VIEW = ("editor", {"command": "view", "path": "calc.py"})


def scenario_turn(tag: str, index: int) -> ScriptedTurn:
    if tag == "long":
        if index >= LONG_TURNS:
            return finish("A long task.")
        calls = [VIEW, ("terminal", {"command": f"echo turn {index}"})]
        return ScriptedTurn(text=f"Turn {index}: {WORDS}", tool_calls=calls)
    turns = SCENARIOS[tag]
    return turns[min(index, len(turns) - 1)]


def responder(body: dict[str, Any]) -> ScriptedTurn:
    """The next turn of the scenario named by `[tag]` in the task's description."""
    messages = body["messages"]
    description = next(m["content"] for m in messages if m["role"] == "user")
    if isinstance(description, list):
        description = json.dumps(description)
    tag = description.split("[", 1)[1].split("]", 1)[0]
    done = sum(1 for m in messages if m["role"] == "assistant")
    return scenario_turn(tag, done)


def start_server(data_dir: Path, model_url: str) -> ServeProcess:
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": model_url,
        "MINIDEVIN_SANDBOX": "off",
        "MINIDEVIN_ALLOW_UNSANDBOXED_MULTIUSER": "true",
        "MINIDEVIN_RATE_LIMIT_LOGIN": "0",
        "MINIDEVIN_TOKEN_COALESCE_MS": "0",  # one event per streamed word
    }
    return ServeProcess(data_dir, env)


@dataclass
class Account:
    email: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}


def account(server: ServeProcess, email: str) -> Account:
    """A user made over REST (for tests that start past the login)."""
    body = {"email": email, "password": PASSWORD, "name": email.split("@")[0]}
    server.request("POST", "/api/auth/register", body)
    token = server.request("POST", "/api/auth/login", body)["access_token"]
    return Account(email, token)


def copy_of_buggy_calc(where: Path) -> Path:
    where.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(BUGGY_CALC, where))


@dataclass
class Watched:
    """A page and every console error and uncaught exception it produced."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def no_errors(self) -> None:
        assert self.errors == [], self.errors


def open_page(
    browser: Browser, base_url: str, width: int = 1440, height: int = 900, dark: bool = False
) -> Iterator[Watched]:
    context = browser.new_context(
        base_url=base_url,
        viewport={"width": width, "height": height},
        accept_downloads=True,
        color_scheme="dark" if dark else "light",
    )
    page = context.new_page()
    watched = Watched(page)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(f"console: {message.text} at {message.location}")

    page.on("console", console)
    page.on("pageerror", lambda error: watched.errors.append(f"pageerror: {error}"))
    try:
        yield watched
    finally:
        context.close()


def log_in(page: Page, user: Account) -> None:
    """Log in through the form (the user exists)."""
    page.goto("/#/login")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Sessions").wait_for()


def screenshots_dir(fallback: Path) -> Path:
    where = Path(os.environ.get("MINIDEVIN_SCREENSHOTS") or fallback)
    where.mkdir(parents=True, exist_ok=True)
    return where


def seqs(page: Page) -> list[int]:
    """The `data-seq` of every timeline element, in document order."""
    found: list[str] = page.locator("[data-seq]").evaluate_all(
        "(nodes) => nodes.map((node) => node.dataset.seq)"
    )
    return [int(value) for value in found]


def events_of(server: ServeProcess, user: Account, task_id: str) -> list[dict[str, Any]]:
    """A finished task's whole log, as its WebSocket replays it (until the close)."""

    async def read() -> list[dict[str, Any]]:
        url = f"{server.url.replace('http', 'ws', 1)}/ws/tasks/{task_id}?token={user.token}"
        async with aiohttp.ClientSession() as client, client.ws_connect(url) as socket:
            return [json.loads(message.data) async for message in socket]

    with ThreadPoolExecutor(1) as thread:  # (Playwright's loop holds this thread)
        return thread.submit(asyncio.run, read()).result(timeout=30)


SHOWN = {"status", "tool_call", "tool_result", "approval_request", "approval_decision"}
SHOWN |= {"error", "user_message", "resumed", "turn_restart"}


def shown_seqs(events: list[dict[str, Any]]) -> set[int]:
    """The seqs the timeline shows one element for: each of the types above, the first token
    of each run of tokens, and a model turn's text that was not streamed."""
    shown: set[int] = set()
    previous = ""
    streamed = False
    for event in events:
        kind = event["type"]
        if kind == "turn_start":
            streamed = False
        if kind in SHOWN or (kind == "token" and previous != "token"):
            shown.add(event["seq"])
        if kind == "token":
            streamed = True
        if kind == "model_turn" and event.get("content") and not streamed:
            shown.add(event["seq"])
        previous = kind
    return shown


def status_of(server: ServeProcess, user: Account, task_id: str) -> str:
    return str(server.request("GET", f"/api/tasks/{task_id}", None, user.auth)["status"])


Check = Callable[[], Any]
