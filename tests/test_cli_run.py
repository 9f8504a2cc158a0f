"""`minidevin run` as a real subprocess, offline with `replay:` trajectories."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import pids_running, process_gone, wait_for

from minidevin.run_view import diff_stat, format_diff_stat, shorten

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "buggy-calc"
TASK = "Fix the failing test in test_calc.py"
README_MODEL = "replay:examples/buggy-calc.trajectory.json"  # relative: run from the repo root


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return {k: v for k, v in env.items() if not k.startswith("MINIDEVIN_")}


def command(repo: Path, data: Path, model: str, *extra: str) -> list[str]:
    run = [sys.executable, "-m", "minidevin.cli", "run", TASK, "--dir", str(repo)]
    return [*run, "--model", model, "--data-dir", str(data), *extra]


def run_cli(
    argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**cli_env(), **(env or {})},
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def recording(tmp_path: Path, *turns: tuple[str, list[tuple[str, dict[str, Any]]]]) -> str:
    messages = [
        {
            "role": "assistant",
            "content": text,
            "tool_calls": [
                {
                    "id": f"call_{n}_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)},
                }
                for i, (name, arguments) in enumerate(calls)
            ],
        }
        for n, (text, calls) in enumerate(turns)
    ]
    path = tmp_path / "recording.json"
    path.write_text(json.dumps(messages))
    return f"replay:{path}"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "buggy-calc"))


def json_events(stdout: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


def test_the_readme_command_fixes_a_copy_of_the_example(repo: Path, tmp_path: Path) -> None:
    shipped = (EXAMPLE / "calc.py").read_text()
    done = run_cli(command(repo, tmp_path / "data", README_MODEL))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "return sum(values) / len(values)" in (repo / "calc.py").read_text()
    assert (EXAMPLE / "calc.py").read_text() == shipped  # the shipped copy stays buggy
    out = done.stdout
    assert "I'll start by running the tests" in out and "$ python3 test_calc.py" in out
    assert "FAIL test_mean" in out and "4 passed, 0 failed" in out
    assert "  [x] Fix the bug in calc.py" in out and "editor str_replace calc.py" in out
    assert "[completed] Task completed successfully" in out
    assert "Task completed (success): Fixed calc.mean()" in out
    assert " calc.py | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n" in out
    assert "Traceback" not in done.stderr


def test_json_prints_one_event_per_line_ending_with_the_final_status(
    repo: Path, tmp_path: Path
) -> None:
    done = run_cli(command(repo, tmp_path / "data", README_MODEL, "--json"))
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    assert events[0]["type"] == "status" and events[0]["status"] == "queued"
    assert {"token", "tool_call", "tool_result", "plan_update", "usage"} <= {
        e["type"] for e in events
    }
    assert events[-1]["type"] == "status" and events[-1]["status"] == "completed"
    assert len({e["task_id"] for e in events}) == 1


def test_a_failed_task_exits_1(repo: Path, tmp_path: Path) -> None:
    done = run_cli(command(repo, tmp_path / "data", f"replay:{tmp_path / 'missing.json'}"))
    assert done.returncode == 1
    assert "error REPLAY_INVALID" in done.stdout and "Task failed" in done.stdout
    assert "No changes to the files." in done.stdout

    done = run_cli(command(repo, tmp_path / "data", "replay:"))
    assert done.returncode == 2 and "replay:" in done.stderr and not done.stdout


def run_help(env: dict[str, str]) -> str:
    done = run_cli([sys.executable, "-m", "minidevin.cli", "run", "--help"], env=env)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # (argparse wraps lines at its own width)


def test_run_help_shows_the_default_model_and_iteration_limit() -> None:
    shown = run_help({"OPENAI_API_KEY": "sk-test"})
    assert "(default: gpt-4o, as OPENAI_API_KEY is set; MINIDEVIN_DEFAULT_MODEL sets" in shown
    assert "(default: 50; MINIDEVIN_MAX_ITERATIONS sets another)" in shown

    shown = run_help({"ANTHROPIC_API_KEY": "sk-test"})
    assert "(default: claude-3-5-sonnet-20241022, as ANTHROPIC_API_KEY is set;" in shown

    env = {"MINIDEVIN_DEFAULT_MODEL": "gpt-4o-mini", "MINIDEVIN_MAX_ITERATIONS": "7"}
    shown = run_help(env)
    assert "(default: gpt-4o-mini, from MINIDEVIN_DEFAULT_MODEL)" in shown
    assert "(default: 7, from MINIDEVIN_MAX_ITERATIONS)" in shown

    shown = run_help({})
    assert "default: the first configured provider's first model, but no API key is set" in shown


def test_a_retried_model_turn_is_shown(repo: Path, tmp_path: Path) -> None:
    limited = ScriptedTurn(error_status=429, headers={"Retry-After": "0.2"})
    finish = ScriptedTurn(
        tool_calls=[("finish", {"summary": "Done after a retry", "success": True})]
    )
    with ScriptedOpenAIServer() as server:
        server.script([limited, finish])
        env = {"OPENAI_API_KEY": "sk-test-key-123", "OPENAI_BASE_URL": server.base_url}
        done = run_cli(command(repo, tmp_path / "data", "gpt-4o"), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    retried = [line for line in done.stdout.splitlines() if line.startswith("[retrying]")]
    assert len(retried) == 1, done.stdout
    assert retried[0].startswith("[retrying] model turn, attempt 2 of ")
    assert " in 0.2 s (PROVIDER_RATE_LIMITED: " in retried[0]
    assert "Task completed (success): Done after a retry" in done.stdout


ASK = "Which name should the notes file have?"


def ask_user_recording(tmp_path: Path) -> str:
    return recording(
        tmp_path,
        ("I need to ask.", [("ask_user", {"question": ASK})]),
        ("Thanks.", [("finish", {"summary": "Asked and answered", "success": True})]),
    )


def test_ask_user_is_answered_from_stdin(repo: Path, tmp_path: Path) -> None:
    model = ask_user_recording(tmp_path)
    done = run_cli(command(repo, tmp_path / "data", model), stdin="\nnotes.md\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"? {ASK}\n> notes.md\n" in done.stdout
    assert "[running] Input received" in done.stdout

    done = run_cli(command(repo, tmp_path / "data", model, "--json"), stdin="notes.md\n")
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    waiting = [e for e in events if e["type"] == "status" and e["status"] == "waiting_input"]
    assert [e["message"] for e in waiting] == [ASK]
    answers = [e["output"] for e in events if e["type"] == "tool_result"]
    assert answers[0] == "notes.md"


def test_ask_user_with_stdin_closed_tells_the_agent(repo: Path, tmp_path: Path) -> None:
    done = run_cli(command(repo, tmp_path / "data", ask_user_recording(tmp_path), "--json"))
    assert done.returncode == 0, done.stderr
    answers = [e["output"] for e in json_events(done.stdout) if e["type"] == "tool_result"]
    assert "stdin is closed" in answers[0]


def test_ctrl_c_stops_the_task_kills_its_processes_and_exits_130(
    repo: Path, tmp_path: Path
) -> None:
    # The command may run sandboxed in its own pid namespace, where `$$` means nothing
    # on the host: the grandchild is found by a unique command line instead.
    marker = f"sleep 300.{time.time_ns() % 1000000}"
    spawn = f"bash -c '{marker} & echo started > grandchild.txt; wait'"
    model = recording(
        tmp_path,
        ("Waiting a while.", [("terminal", {"command": spawn, "timeout": 600})]),
        ("Never reached.", [("finish", {"summary": "no", "success": True})]),
    )
    output = tmp_path / "output.txt"
    with open(output, "w") as out:
        process = subprocess.Popen(
            command(repo, tmp_path / "data", model),
            cwd=ROOT,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started = repo / "grandchild.txt"
    try:
        wait_for(lambda: started.exists() or process.poll() is not None, 60, "the grandchild")
        assert started.exists(), f"exit {process.poll()}: {output.read_text()}"
        wait_for(lambda: bool(pids_running(marker)), 10, "the grandchild's process")
        pids = pids_running(marker)  # the sleep, and the shells whose command names it
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 130

        def survivors() -> str:
            return f"the command to die ({[p for p in pids if not process_gone(p)]} live)"

        wait_for(lambda: all(map(process_gone, pids)), 5, survivors)
        assert not pids_running(marker)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in pids_running(marker):  # a failed test leaks nothing
            os.kill(pid, signal.SIGKILL)
    text = output.read_text()
    assert "$ bash -c" in text and "stopping the task" in text
    assert "[stopped]" in text and "Task stopped" in text and "Never reached" not in text


PATCH = """\
diff --git a/calc.py b/calc.py
index 3293b39..97e8b51 100644
--- a/calc.py
+++ b/calc.py
@@ -1,3 +1,3 @@
 def mean(values):
--- a/weird line that starts like a header
-    return 1
+    return 2
+++ b/another one
diff --git a/new file.txt b/new file.txt
new file mode 100644
index 0000000..e69de29
--- /dev/null
+++ b/new file.txt
@@ -0,0 +1 @@
+hello
diff --git a/old.py b/old.py
deleted file mode 100644
index 1111111..0000000
--- a/old.py
+++ /dev/null
@@ -1,2 +0,0 @@
-a
-b
diff --git a/logo.png b/logo.png
new file mode 100644
index 0000000..2222222
GIT binary patch
literal 4
LcmZQzWMT#Y01f~L

literal 0
HcmV?d00001

diff --git a/a.txt b/b.txt
similarity index 100%
rename from a.txt
rename to b.txt
"""


def test_diff_stat_counts_each_file_of_a_git_patch() -> None:
    assert diff_stat(PATCH) == [
        ("calc.py", 2, 2),
        ("new file.txt", 1, 0),
        ("old.py", 0, 2),
        ("logo.png", 0, 0),
        ("b.txt", 0, 0),
    ]
    stat = format_diff_stat(PATCH).splitlines()
    assert stat[0] == " calc.py      | 4 ++--"
    assert stat[-1] == " 5 files changed, 3 insertions(+), 4 deletions(-)"
    assert format_diff_stat(PATCH.split("diff --git a/new")[0]).endswith(
        " 1 file changed, 2 insertions(+), 2 deletions(-)"
    )


def test_shorten_keeps_the_head_and_the_tail() -> None:
    assert shorten("a\nb\n") == ["a", "b"]
    lines = shorten("\n".join(f"line {n}" for n in range(20)))
    assert lines == ["line 0", "line 1", "... 15 more lines ...", "line 17", "line 18", "line 19"]
    assert shorten("x" * 500)[0].endswith("...") and len(shorten("x" * 500)[0]) == 160


def test_approvals_are_asked_at_the_terminal(repo: Path, tmp_path: Path) -> None:
    model = recording(
        tmp_path,
        ("", [("terminal", {"command": "touch first.txt"})]),
        ("", [("terminal", {"command": "touch second.txt"})]),
        ("", [("finish", {"summary": "asked twice", "success": True})]),
    )
    argv = command(repo, tmp_path / "data", model, "--approval-policy", "risky")
    done = run_cli(argv, stdin="y\nnot that one\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "? approve $ touch first.txt" in done.stdout
    assert "[approved]" in done.stdout and "[rejected]: not that one" in done.stdout
    assert (repo / "first.txt").exists() and not (repo / "second.txt").exists()
    # read-only commands, and the default policy, do not ask
    quiet = recording(tmp_path, ("", [("terminal", {"command": "ls"})]))
    done = run_cli(command(repo, tmp_path / "data", quiet, "--approval-policy", "risky"))
    assert "? approve" not in done.stdout, done.stdout
