"""What `minidevin run` prints: live events (readable, or JSON lines) and a diff stat.

A model turn that fails and is retried shows as `[retrying] model turn, attempt
2 of 3 in 0.5 s (CODE: reason)`; text the failed attempt had streamed stays on
screen, but the model's answer is what follows the line.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from minidevin.runtime.events import Event
from minidevin.runtime.tools.registry import TOOLS, ToolRegistry

STEP_MARKS = {"pending": " ", "in_progress": ">", "completed": "x", "failed": "!", "skipped": "-"}
RESULT_LINES, LINE_WIDTH = 6, 160


class JsonView:
    """One compact JSON object per event on stdout, nothing else."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def show(self, event: Event) -> None:
        line = json.dumps(event.to_message(), separators=(",", ":"), default=str)
        self.out.write(line + "\n")
        self.out.flush()

    def answered(self, answer: str, echo: bool) -> None:
        pass


class HumanView:
    """Readable live output: text as it streams, tool calls, results, plan, status."""

    def __init__(self, out: TextIO, tools: ToolRegistry = TOOLS) -> None:
        self.out = out
        self.tools = tools  # how each tool's call is shown (`label`, `quiet`)
        self.mid_line = False
        self.plan: list[tuple[str, str]] = []
        self.status_message = ""

    def show(self, event: Event) -> None:
        data = event.data
        match event.type:
            case "token" if data.get("content"):
                self.out.write(data["content"])
                self.mid_line = not data["content"].endswith("\n")
            case "tool_call":
                self._tool_call(data.get("tool", "?"), data.get("input"))
            case "tool_result":
                self._tool_result(
                    data.get("tool", "?"), data.get("output", ""), data.get("success")
                )
            case "plan_update":
                self._plan(data.get("plan", {}).get("steps", []))
            case "status":
                self.status_message = data.get("message", "")
                if data.get("status") == "waiting_approval":
                    pass  # (its `approval_request` asked already)
                elif data.get("status") == "waiting_input":
                    self._line(f"? {self.status_message}")
                    self.out.write("> ")
                    self.mid_line = True
                else:
                    self._line(f"[{data.get('status')}] {self.status_message}")
            case "approval_request":
                label = self.tools.label(data.get("tool", "?"), data.get("input"))
                self._line(_clip(f"? approve {label}  ({data.get('reason', '')})"))
                self.out.write("  [y to approve; n or a reason to reject] > ")
                self.mid_line = True
            case "approval_decision":
                reason = f": {data['reason']}" if data.get("reason") else ""
                done = {"approve": "approved", "reject": "rejected"}.get(data.get("decision"), "?")
                self._line(_clip(f"[{done}]{reason}"))
            case "error":
                self._line(f"error {data.get('code', '')}: {data.get('error', '')}")
            case "turn_restart":
                self._line(_clip(retry_line(data)))
            case "resumed":
                self._line(f"[resumed] up to {data.get('max_iterations')} iterations in all")
                if data.get("message"):
                    self._line(_clip(f"> {data['message']}"))
        self.out.flush()

    def answered(self, answer: str, echo: bool) -> None:
        self.out.write(answer + "\n" if echo else "")
        self.mid_line = False
        self.out.flush()

    def summary(self, detail: Any, patch: str) -> None:
        result = detail.result
        headline = f"Task {detail.status}"
        if result is not None:
            headline += f" ({'success' if result.success else 'no success'}): {result.summary}"
        elif self.status_message:
            headline += f": {self.status_message}"
        usage = detail.usage
        self._line("")
        self._line(headline)
        self._line(
            f"{detail.iterations} iteration(s), "
            f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
        )
        self._line(format_diff_stat(patch) if patch.strip() else "No changes to the files.")
        if detail.status in ("failed", "stopped"):
            self._line(f"Continue it: minidevin run --resume {detail.id}")
        self.out.flush()

    def _tool_call(self, tool: str, arguments: Any) -> None:
        if not self.tools.quiet(tool):  # a quiet one shows as the plan, question or summary
            self._line(_clip(self.tools.label(tool, arguments)))

    def _tool_result(self, tool: str, output: str, success: Any) -> None:
        if self.tools.quiet(tool):
            if not success:
                self._line(f"  {tool} failed: {_clip(output)}")
            return
        for line in shorten(output):
            self._line(f"  | {line}")
        if not success:
            self._line("  (failed)")

    def _plan(self, steps: list[dict[str, Any]]) -> None:
        plan = [(str(s.get("description", "")), str(s.get("status", ""))) for s in steps]
        if plan == self.plan:
            return
        self.plan = plan
        self._line("Plan:")
        for description, status in plan:
            self._line(f"  [{STEP_MARKS.get(status, '?')}] {description}")

    def _line(self, text: str) -> None:
        if self.mid_line:
            self.out.write("\n")
            self.mid_line = False
        self.out.write(text + "\n")


def retry_line(data: dict[str, Any]) -> str:
    """A `turn_restart`: which attempt comes, when, and why the last one failed."""
    attempt, most = data.get("attempt", "?"), data.get("max_attempts", "?")
    delay = data.get("delay")
    when = f" in {delay:g} s" if isinstance(delay, int | float) else ""
    why = ": ".join(str(part) for part in (data.get("code"), data.get("reason")) if part)
    return f"[retrying] model turn, attempt {attempt} of {most}{when}" + (
        f" ({why})" if why else ""
    )


def shorten(output: str, limit: int = RESULT_LINES) -> list[str]:
    """At most `limit` (clipped) lines: the head and the tail of a longer output."""
    lines = [_clip(line) for line in output.rstrip("\n").splitlines()]
    if len(lines) <= limit:
        return lines
    head, tail = 2, limit - 3
    return [*lines[:head], f"... {len(lines) - head - tail} more lines ...", *lines[-tail:]]


def diff_stat(patch: str) -> list[tuple[str, int, int]]:
    """(path, insertions, deletions) for each file of a git patch."""
    files: list[list[Any]] = []
    in_hunk = False
    for line in patch.splitlines():
        if line.startswith("diff --git "):
            files.append([_git_path(line[len("diff --git ") :]), 0, 0])
            in_hunk = False
        elif not files:
            continue
        elif line.startswith("@@"):
            in_hunk = True
        elif in_hunk and line[:1] in ("+", "-"):
            files[-1][1 if line[0] == "+" else 2] += 1
        elif line.startswith("rename to "):
            files[-1][0] = line[len("rename to ") :]
    return [(path, added, removed) for path, added, removed in files]


def format_diff_stat(patch: str) -> str:
    """Like `git diff --stat`: one line per file, then the totals."""
    stat = diff_stat(patch)
    width = max((len(path) for path, _, _ in stat), default=0)
    lines = []
    for path, added, removed in stat:
        bar = "+" * min(added, 40) + "-" * min(removed, 40)
        lines.append(f" {path.ljust(width)} | {added + removed} {bar}".rstrip())
    added, removed = sum(s[1] for s in stat), sum(s[2] for s in stat)
    totals = [_count(len(stat), "file") + " changed"]
    if added or not removed:
        totals.append(_count(added, "insertion") + "(+)")
    if removed or not added:
        totals.append(_count(removed, "deletion") + "(-)")
    return "\n".join([*lines, " " + ", ".join(totals)])


def _git_path(names: str) -> str:
    """The path in `a/PATH b/PATH` (the `b/` side, when the two sides differ)."""
    names = names.replace('"', "")
    half = (len(names) - 1) // 2
    if names[half : half + 3] == " b/" and names[2:half] == names[half + 3 :]:
        return names[half + 3 :]
    return names.rpartition(" b/")[2] or names


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _clip(text: str, width: int = LINE_WIDTH) -> str:
    text = text.expandtabs(4).rstrip()
    return text if len(text) <= width else text[: width - 3] + "..."
