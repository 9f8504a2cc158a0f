"""The web console in a real browser (Playwright driving the system's Chromium) against a
real `minidevin serve` and the scripted model: register, log in, a session on a copy of
examples/buggy-calc, a task's plan, command output and diff appearing live, ask_user,
approve and reject, stop and resume, a reload mid-task, a dropped WebSocket, a 390 px
screen, keys and secrets, and the first paint of a finished 5,000-event task."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from console_helpers import (  # noqa: E402
    PASSWORD,
    Watched,
    account,
    copy_of_buggy_calc,
    events_of,
    log_in,
    open_page,
    responder,
    screenshots_dir,
    seqs,
    shown_seqs,
    start_server,
    status_of,
)
from playwright.sync_api import Browser, Page, WebSocketRoute, expect  # noqa: E402
from scripted_provider import ScriptedOpenAIServer  # noqa: E402
from serve_process import ServeProcess  # noqa: E402
from waiting import wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ScriptedOpenAIServer(responder=responder) as model:
        process = start_server(tmp_path_factory.mktemp("console") / "data", model.base_url)
        try:
            yield process
        finally:
            process.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def watched(browser: Browser, server: ServeProcess) -> Iterator[Watched]:
    yield from open_page(browser, server.url)


@pytest.fixture(scope="module")
def workspaces() -> Iterator[Path]:
    """Where the tasks' working directories go: traversable by the uid commands run as
    (pytest's own temporary directories are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="minidevin-console-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def work(workspaces: Path, request: pytest.FixtureRequest) -> Path:
    """An empty working directory of the test's own."""
    directory = workspaces / request.node.name[:60]
    directory.mkdir()
    return directory


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return screenshots_dir(tmp_path / "screenshots")


def new_session(page: Page, name: str, directory: Path, policy: str = "never") -> None:
    page.goto("/#/sessions")
    page.get_by_role("button", name="New session").click()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Working directory").fill(str(directory))
    page.get_by_label("Approval policy").select_option(policy)
    page.get_by_role("button", name="Create session").click()
    expect(page.get_by_role("heading", name=name)).to_be_visible()


def run_task(page: Page, description: str) -> str:
    """Start a task from the session page; the task page's id."""
    page.get_by_label("Task", exact=True).fill(description)
    page.get_by_role("button", name="Run task").click()
    expect(page.get_by_role("region", name="Timeline")).to_be_visible()
    return page.url.rsplit("/", 1)[1]


def status_badge(page: Page, status: str) -> None:
    facts = page.get_by_label("Task status")
    expect(facts.locator(".badge")).to_have_text(status.replace("_", " "), timeout=15000)


def test_the_whole_story_register_log_in_run_answer_and_see_the_diff(
    watched: Watched, server: ServeProcess, work: Path, shots: Path
) -> None:
    page = watched.page
    page.goto("/")
    expect(page).to_have_url(f"{server.url}/#/login")
    page.get_by_role("link", name="Register").click()
    page.get_by_label("Name", exact=True).fill("Ada")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.screenshot(path=shots / "register.png")
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_role("status")).to_have_text("Account created. Log in with it.")
    expect(page.get_by_label("Email")).to_have_value("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()

    work = copy_of_buggy_calc(work / "buggy-calc")
    new_session(page, "Fix the calculator", work)
    expect(page.get_by_label("Model")).to_have_value("gpt-4o")
    run_task(page, "[story] Make the tests of calc.py pass")

    plan = page.get_by_role("region", name="Plan")
    timeline = page.get_by_role("region", name="Timeline")
    # live: the task waits on its question while these are already on the page
    expect(page.get_by_text("mean() is off by one. Fix calc.py?").first).to_be_visible()
    for step in ("Run the tests", "Fix mean()", "Run the tests again"):
        expect(plan.get_by_text(step, exact=True)).to_be_visible()
    expect(plan.get_by_role("checkbox", name="Run the tests: in progress")).not_to_be_checked()
    expect(timeline.locator("pre.output").first).to_contain_text("mean([1, 2, 3]) returned 1.5")
    expect(timeline.get_by_text("I will run the tests first.")).to_be_visible()
    status_badge(page, "waiting_input")
    page.screenshot(path=shots / "task-asking.png", full_page=True)

    page.get_by_label("Answer").fill("Yes, fix it.")
    page.get_by_role("button", name="Send").click()
    status_badge(page, "completed")
    expect(plan.get_by_role("checkbox", name="Run the tests again: completed")).to_be_checked()
    expect(timeline.get_by_text("Yes, fix it.")).to_be_visible()  # the answer, as the result
    expect(timeline.locator("pre.output").last).to_contain_text("4 passed, 0 failed")
    expect(page.get_by_role("region", name="Summary")).to_contain_text("Fixed mean()")
    diff = page.get_by_role("region", name="Diff")
    expect(diff.locator("summary code")).to_have_text("calc.py")
    expect(diff.locator(".line.del")).to_have_text(["-    return sum(values) / (len(values) + 1)"])
    expect(diff.locator(".line.add")).to_have_text(["+    return sum(values) / len(values)"])
    expect(page.get_by_role("button", name="Download trajectory.json")).to_be_visible()
    assert "return sum(values) / len(values)" in (work / "calc.py").read_text()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download diff.patch").click()
    assert "len(values)" in Path(download.value.path()).read_text()
    page.screenshot(path=shots / "task-finished.png", full_page=True)

    page.get_by_role("link", name="Session", exact=True).click()
    expect(page.get_by_role("list", name="Tasks").locator(".badge")).to_have_text(["completed"])
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sessions").click()
    expect(page.get_by_role("table", name="Sessions")).to_contain_text("completed")
    page.screenshot(path=shots / "sessions.png", full_page=True)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('minidevin.token')") is None
    watched.no_errors()


def test_approve_one_call_reject_another_and_reload_mid_task(
    watched: Watched, server: ServeProcess, work: Path, shots: Path
) -> None:
    page = watched.page
    user = account(server, "grace@example.com")
    log_in(page, user)
    new_session(page, "Approvals", work, policy="risky")
    task_id = run_task(page, "[approvals] Make two files")

    timeline = page.get_by_role("region", name="Timeline")
    expect(timeline.get_by_text("touch approved.txt", exact=True)).to_be_visible()
    status_badge(page, "waiting_approval")
    page.get_by_role("button", name="Approve").click()
    wait_for(lambda: (work / "approved.txt").exists(), 10, what="the approved command")
    expect(timeline.get_by_text("touch rejected.txt", exact=True)).to_be_visible()
    expect(timeline.get_by_text("Approved.", exact=True)).to_be_visible()
    status_badge(page, "waiting_approval")
    before = seqs(page)

    page.reload()  # mid-task: the page rebuilds from the history, then goes on live
    status_badge(page, "waiting_approval")
    expect(page.get_by_role("button", name="Approve")).to_have_count(1)
    assert seqs(page) == before
    page.screenshot(path=shots / "task-approval.png", full_page=True)
    page.get_by_label("Reason for rejecting").fill("no second file")
    page.get_by_role("button", name="Reject").click()
    status_badge(page, "completed")
    expect(timeline.get_by_text("Rejected: no second file")).to_be_visible()
    assert not (work / "rejected.txt").exists()
    live = seqs(page)
    assert len(live) == len(set(live)), live  # nothing twice
    assert set(before) < set(live)

    page.reload()  # the finished task, from its history alone
    status_badge(page, "completed")
    expect(page.get_by_role("region", name="Summary")).to_be_visible()
    assert seqs(page) == live
    assert set(live) == shown_seqs(events_of(server, user, task_id))  # nothing missing either
    assert status_of(server, user, task_id) == "completed"
    watched.no_errors()


def test_stop_a_task_then_resume_it_with_a_message(
    watched: Watched, server: ServeProcess, work: Path
) -> None:
    page = watched.page
    log_in(page, account(server, "linus@example.com"))
    new_session(page, "Stop and resume", work)
    run_task(page, "[stop] Wait a minute")
    expect(page.get_by_role("region", name="Timeline").get_by_text("sleep 60")).to_be_visible()
    status_badge(page, "running")
    page.get_by_role("button", name="Stop").click()
    status_badge(page, "stopped")
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    page.get_by_label("Resume message").fill("Skip the wait and finish.")
    page.get_by_role("button", name="Resume").click()
    status_badge(page, "completed")
    timeline = page.get_by_role("region", name="Timeline")
    expect(timeline.get_by_text("Skip the wait and finish.")).to_be_visible()
    expect(page.get_by_role("region", name="Summary")).to_contain_text("Resumed and finished.")
    expect(page.get_by_role("button", name="Resume")).to_be_hidden()
    found = seqs(page)
    assert len(found) == len(set(found)), found
    watched.no_errors()


def pass_sockets_through(page: Page) -> list[WebSocketRoute]:
    """The page's task WebSockets, each passed through to the server and kept (to drop)."""
    sockets: list[WebSocketRoute] = []

    def through(route: WebSocketRoute) -> None:
        sockets.append(route)
        route.connect_to_server()

    page.route_web_socket("**/ws/tasks/**", through)
    return sockets


def test_a_dropped_websocket_reconnects_after_the_last_seq_and_says_so(
    watched: Watched, server: ServeProcess, work: Path
) -> None:
    page = watched.page
    log_in(page, account(server, "barbara@example.com"))
    sockets = pass_sockets_through(page)
    new_session(page, "Reconnect", work)
    run_task(page, "[reconnect] Ask, then go on")
    expect(page.get_by_text("Ready?").first).to_be_visible()
    status_badge(page, "waiting_input")
    before = seqs(page)
    sockets[-1].close(code=4000, reason="dropped by the test")
    connection = page.get_by_role("status").filter(has_text="Reconnected")
    expect(connection).to_contain_text(f"after event {max(before)}")
    assert len(sockets) == 2 and "after=" in sockets[1].url
    assert sockets[1].url.endswith(f"after={max(before)}")
    page.get_by_label("Answer").fill("go")
    page.get_by_role("button", name="Send").click()
    status_badge(page, "completed")
    expect(page.get_by_role("region", name="Timeline")).to_contain_text("after the drop")
    found = seqs(page)
    assert len(found) == len(set(found)), found  # nothing twice
    assert set(before) < set(found)
    watched.no_errors()


def test_a_revoked_login_sends_the_reader_back_to_log_in_not_into_endless_retries(
    watched: Watched, server: ServeProcess, work: Path
) -> None:
    page = watched.page
    log_in(page, account(server, "revoked@example.com"))
    sockets = pass_sockets_through(page)
    new_session(page, "Revoked", work)
    run_task(page, "[reconnect] Ask, then go on")
    status_badge(page, "waiting_input")
    token = page.evaluate("sessionStorage.getItem('minidevin.token')")
    server.request("POST", "/api/auth/logout", None, {"Authorization": f"Bearer {token}"})
    sockets[-1].close(code=4000, reason="dropped by the test")  # the reconnect is refused
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("log in again")
    # (the refused handshake is a console error of the browser's own: not checked here)


def test_a_390_px_dark_screen_reads_without_sideways_scrolling(
    browser: Browser, server: ServeProcess, work: Path, shots: Path
) -> None:
    user = account(server, "katherine@example.com")
    for watched in open_page(browser, server.url, width=390, height=844, dark=True):
        page = watched.page
        log_in(page, user)
        new_session(page, "Narrow", copy_of_buggy_calc(work / "calc"))
        run_task(page, "[small] List the files")
        status_badge(page, "completed")
        expect(page.get_by_role("region", name="Diff")).to_be_visible()
        timeline = page.get_by_role("region", name="Timeline")
        expect(timeline).to_contain_text("calc.py")
        long_output = timeline.locator(".item.tool", has_text="seq 1 40").locator("details")
        expect(long_output.locator("summary")).to_have_text(re.compile(r"Output \(4\d lines\)"))
        expect(long_output.locator("pre")).to_be_hidden()  # collapsed: 40 lines
        long_output.locator("summary").focus()
        page.keyboard.press("Enter")  # opened from the keyboard
        expect(long_output.locator("pre")).to_contain_text("39\n40")
        page.screenshot(path=shots / "task-390.png", full_page=True)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide"
        page.goto("/#/sessions")
        expect(page.get_by_role("table", name="Sessions")).to_contain_text("Narrow")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        watched.no_errors()


def test_api_keys_shown_once_and_revoked_and_secrets_by_name_only(
    watched: Watched, server: ServeProcess, shots: Path
) -> None:
    page = watched.page
    log_in(page, account(server, "margaret@example.com"))
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("ci")
    page.get_by_role("button", name="Create key").click()
    key = page.locator(".secret-value")
    expect(key).to_have_text(re.compile(r"^md_\S{20,}$"))
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    page.get_by_role("button", name="Revoke ci").click()
    expect(page.get_by_text("No API keys yet.")).to_be_visible()

    page.get_by_role("link", name="Secrets").click()
    expect(page.get_by_role("heading", name="Secrets")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("DEPLOY_TOKEN")
    page.get_by_label("Value").fill("s3cr3t-value")
    page.get_by_role("button", name="Save secret").click()
    expect(page.get_by_role("cell", name="DEPLOY_TOKEN", exact=True)).to_be_visible()
    assert "s3cr3t-value" not in page.content()
    page.screenshot(path=shots / "secrets.png", full_page=True)
    page.get_by_role("button", name="Delete DEPLOY_TOKEN").click()
    expect(page.get_by_text("No secrets yet.")).to_be_visible()
    # an API error is shown in the alert region
    page.get_by_label("Name", exact=True).fill("PATH")
    page.get_by_label("Value").fill("whatever")
    page.get_by_role("button", name="Save secret").click()
    expect(page.get_by_role("alert")).to_be_visible()
    watched.errors = [e for e in watched.errors if "422" not in e]  # (the refused request)
    watched.no_errors()


def test_a_finished_5000_event_task_paints_in_under_a_second(
    watched: Watched, server: ServeProcess, work: Path
) -> None:
    user = account(server, "edsger@example.com")
    work = copy_of_buggy_calc(work / "calc")
    session = server.request(
        "POST", "/api/sessions", {"name": "long", "working_directory": str(work)}, user.auth
    )
    body = {"description": "[long] View calc.py many times", "max_iterations": 200}
    task = server.request("POST", f"/api/sessions/{session['id']}/tasks", body, user.auth)
    wait_for(lambda: status_of(server, user, task["id"]) == "completed", 60, what="the long task")
    page = watched.page
    log_in(page, user)
    started = time.monotonic()
    page.goto(f"/#/tasks/{task['id']}")
    page.get_by_role("region", name="Timeline").locator("[data-seq]").first.wait_for()
    first_paint = time.monotonic() - started
    expect(page.get_by_role("region", name="Diff")).to_be_visible(timeout=30000)
    everything = time.monotonic() - started
    last = page.locator("[data-seq]").last.get_attribute("data-seq")
    print(f"\n5,000-event task: first paint {first_paint:.3f} s, whole history {everything:.3f} s")
    assert last is not None and int(last) >= 5000
    assert first_paint < 1.0
    watched.no_errors()
