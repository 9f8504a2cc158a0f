"""The tool registry: each tool declared once, its schema, validation and label from it.

The schema the model is sent comes from the argument models (checked on the
request the scripted OpenAI server receives from a real task); bad arguments get
one clear message; a tool registered from a raw JSON schema validates and runs
(also through a real ToolActor); clients label calls from the registry.
"""

from __future__ import annotations

import io
import json
import queue
from pathlib import Path
from typing import Any

import jsonschema
import pykka
import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.actors.children import ToolActor
from minidevin.actors.messages import RunTool, ToolDone
from minidevin.api import Runtime
from minidevin.run_view import HumanView
from minidevin.runtime.events import Event
from minidevin.runtime.providers.anthropic_messages import to_anthropic_tools
from minidevin.runtime.snapshots import Snapshots
from minidevin.runtime.tools import TOOLS, ToolContext, ToolError, ToolResult
from minidevin.runtime.tools.registry import (
    STEP_STATUSES,
    PlanArguments,
    ToolRegistry,
    ToolSpec,
    default_registry,
)
from minidevin.runtime.tools.terminal import TerminalArguments

BUILT_IN = ("terminal", "editor", "plan", "ask_user", "finish")


def keys_anywhere(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for value in node.values() for k in keys_anywhere(value)}
    if isinstance(node, list):
        return {k for item in node for k in keys_anywhere(item)}
    return set()


# --- the schema sent to the model comes from the models --------------------------------------


def test_each_schema_is_generated_from_the_argument_model() -> None:
    schemas = TOOLS.schemas()
    assert [s["function"]["name"] for s in schemas] == list(BUILT_IN)
    for schema in schemas:
        spec = TOOLS.spec(schema["function"]["name"])
        parameters = schema["function"]["parameters"]
        assert parameters == spec.arguments.tool_schema()
        assert list(parameters["properties"]) == list(spec.arguments.model_fields)
        assert parameters["type"] == "object" and parameters["additionalProperties"] is False
        assert not keys_anywhere(parameters) & {"$defs", "$ref", "title", "anyOf"}
        jsonschema.Draft202012Validator.check_schema(parameters)
    plan = TOOLS.spec("plan").arguments.tool_schema()
    step = plan["properties"]["steps"]["items"]
    assert step["properties"]["status"]["enum"] == list(STEP_STATUSES)
    assert step["required"] == ["description"] and plan["required"] == ["steps"]
    finish = TOOLS.spec("finish").arguments.tool_schema()
    assert finish["required"] == ["summary"]
    assert finish["properties"]["success"] == {
        "default": True,
        "description": "Whether the task succeeded.",
        "type": "boolean",
    }
    assert TerminalArguments.tool_schema()["properties"]["timeout"]["exclusiveMinimum"] == 0
    # the Anthropic provider sends the same schema as `input_schema`
    anthropic = to_anthropic_tools(schemas)
    assert [t["input_schema"] for t in anthropic] == [s["function"]["parameters"] for s in schemas]


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("terminal", {"command": "ls", "timeout": 5}),
        ("terminal", {"command": "ls", "timeout": 0}),
        ("terminal", {"command": "ls", "timeout": "5"}),
        ("terminal", {"command": "ls", "cwd": "/"}),
        ("editor", {"command": "view", "path": "a", "view_range": [1, 2]}),
        ("editor", {"command": "delete", "path": "a"}),
        ("plan", {"steps": [{"description": "a", "status": "completed"}]}),
        ("plan", {"steps": [{"description": "a", "status": "done"}]}),
        ("plan", {"steps": []}),
        ("finish", {"summary": "ok", "success": "yes"}),
        ("ask_user", {}),
    ],
)
def test_the_schema_and_the_validation_agree(name: str, arguments: dict[str, Any]) -> None:
    """What the schema the model sees accepts, the validation accepts, and the reverse."""
    schema = TOOLS.spec(name).arguments.tool_schema()
    schema_accepts = jsonschema.Draft202012Validator(schema).is_valid(arguments)
    try:
        TOOLS.parse(name, json.dumps(arguments))
        model_accepts = True
    except ToolError:
        model_accepts = False
    assert schema_accepts == model_accepts


async def test_a_real_task_sends_the_registry_schemas_to_the_provider(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [
            ScriptedTurn(tool_calls=[("plan", {"steps": ["look", "fix"]})]),
            ScriptedTurn(tool_calls=[("finish", {"summary": "done"})]),
        ]
    )
    session = await runtime.create_session("s", tmp_path)
    task = await runtime.create_task(session.id, "do it")
    events = [event async for event in runtime.events(task.id)]
    assert openai_server.requests[0]["tools"] == TOOLS.schemas()
    plans = [e.data["plan"] for e in events if e.type == "plan_update"]
    assert plans == [
        {
            "steps": [
                {"id": "step-1", "description": "look", "status": "pending"},
                {"id": "step-2", "description": "fix", "status": "pending"},
            ]
        }
    ]
    done = await runtime.get_task(task.id)
    assert done.status == "completed" and done.result is not None and done.result.success


# --- bad arguments: one clear message -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        (
            "terminal",
            '{"command": "echo',
            "invalid arguments for tool 'terminal': not valid JSON (Unterminated string "
            "starting at: line 1 column 13); send the arguments as a single JSON object",
        ),
        (
            "terminal",
            '["ls"]',
            "invalid arguments for tool 'terminal': expected a JSON object, got an array; "
            "send the arguments as a single JSON object",
        ),
        ("terminal", "", "invalid arguments for tool 'terminal': `command` is required"),
        (
            "terminal",
            '{"command": "ls", "timeout": "10"}',
            "invalid arguments for tool 'terminal': `timeout` input should be a valid number "
            '(got "10")',
        ),
        (
            "terminal",
            '{"comand": "ls"}',
            "invalid arguments for tool 'terminal': `command` is required; `comand` is not an "
            "argument of this tool (its arguments are: command, timeout)",
        ),
        ("terminal", '{"command": "  "}', "`command` must not be empty"),
        (
            "plan",
            '{"steps": ["a", {"description": "b", "status": "done"}]}',
            "invalid arguments for tool 'plan': `steps[1].status` input should be 'pending', "
            "'in_progress', 'completed', 'failed' or 'skipped' (got \"done\")",
        ),
        ("plan", '{"steps": []}', "`steps` list should have at least 1 item"),
        ("finish", '{"summary": ""}', "`summary` string should have at least 1 character"),
        ("finish", '{"summary": "x", "success": "yes"}', "`success` input should be a valid"),
        ("ask_user", '{"question": 3}', "`question` input should be a valid string (got 3)"),
        ("editor", '{"command": "create", "path": "f"}', "`file_text` is required for `create`"),
        ("editor", '{"command": "view", "path": "f", "view_range": [1]}', "two integers"),
        (
            "browse",
            "{}",
            "unknown tool 'browse'; the tools are: terminal, editor, plan, ask_user, finish",
        ),
    ],
)
def test_bad_arguments_get_a_clear_message(name: str, raw: str, message: str) -> None:
    with pytest.raises(ToolError) as caught:
        TOOLS.parse(name, raw)
    assert message in str(caught.value)


def test_control_tools_parse_to_what_the_task_needs() -> None:
    plan = TOOLS.parse("plan", '{"steps": ["a", {"description": "b", "status": "completed"}]}')
    assert isinstance(plan, PlanArguments)
    assert plan.to_plan()["steps"] == [
        {"id": "step-1", "description": "a", "status": "pending"},
        {"id": "step-2", "description": "b", "status": "completed"},
    ]
    assert TOOLS.parse("finish", '{"summary": "ok"}').result() == {"success": True, "summary": "ok"}
    assert TOOLS.parse("ask_user", '{"question": "Why?"}').question == "Why?"
    assert TOOLS.runs_in("plan") == "task" and TOOLS.runs_in("terminal") == "tools"
    assert TOOLS.runs_in("browse") is None


def test_a_tool_is_declared_once_and_checked() -> None:
    registry = default_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(TOOLS.spec("plan"))
    with pytest.raises(ValueError, match="tool name"):
        ToolSpec("bad name", "", PlanArguments, "task", label=str)
    with pytest.raises(ValueError, match="executor"):
        ToolSpec("x", "", PlanArguments, "tools", label=str)


# --- external tools -------------------------------------------------------------------------

COUNT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "text": {"type": "string", "description": "What to count in."},
        "unit": {"enum": ["words", "lines"]},
        "nested": {"type": "object", "properties": {"x": {"type": "integer"}}},
    },
    "required": ["text"],
    "additionalProperties": False,
}


def count(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    text = arguments["text"]
    parts = text.splitlines() if arguments.get("unit") == "lines" else text.split()
    return ToolResult(f"{len(parts)} in {context.working_directory.name}", True)


def with_counter() -> ToolRegistry:
    registry = default_registry()
    registry.register_external("count", "Count words or lines.", COUNT_SCHEMA, count)
    return registry


def test_an_external_tool_from_a_json_schema_validates_and_runs(tmp_path: Path) -> None:
    registry = with_counter()
    sent = registry.schemas()[-1]["function"]
    assert sent["name"] == "count" and sent["description"] == "Count words or lines."
    assert sent["parameters"] == {k: v for k, v in COUNT_SCHEMA.items() if k != "$schema"}
    assert registry.runs_in("count") == "tools" and "count" not in TOOLS

    context = ToolContext(working_directory=tmp_path)
    run = registry.executors()
    assert registry.execute("count", '{"text": "a b c"}', context, run) == ToolResult(
        f"3 in {tmp_path.name}", True
    )
    lines = '{"text": "a\\nb", "unit": "lines", "nested": {"x": 1}}'
    assert registry.execute("count", lines, context, run).output.startswith("2 in")
    for raw, message in [
        ("{}", "`text` is required"),
        ('{"text": 5}', "`text` should be of type string (got 5)"),
        ('{"text": "a", "unit": "bytes"}', '`unit` should be one of "words", "lines"'),
        ('{"text": "a", "size": 1}', "`size` is not an argument of this tool (its arguments"),
        ("[1]", "expected a JSON object, got an array"),
    ]:
        result = registry.execute("count", raw, context, run)
        assert not result.success and message in result.output, result.output
    assert "unknown tool 'nope'" in registry.execute("nope", "{}", context, run).output
    assert registry.execute("plan", '{"steps": ["a"]}', context, run) == ToolResult(
        "tool 'plan' is not run by the tool runner", False
    )
    with pytest.raises(ValueError, match="object"):
        registry.register_external("bad", "", {"type": "string"}, count)


def test_an_external_tool_runs_through_a_tool_actor(tmp_path: Path) -> None:
    replies: queue.Queue[Any] = queue.Queue()

    class Parent(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> None:
            replies.put(message)

    parent = Parent.start()
    context = ToolContext(working_directory=tmp_path)
    snapshots = Snapshots(tmp_path, tmp_path / "snap.git")
    actor = ToolActor.start(parent, context, snapshots, registry=with_counter())
    try:
        actor.tell(RunTool("call-1", "count", '{"text": "one two"}'))
        assert replies.get(timeout=10) == ToolDone(
            "call-1", ToolResult(f"2 in {tmp_path.name}", True)
        )
        actor.tell(RunTool("call-2", "terminal", '{"command": "echo hi"}'))
        assert replies.get(timeout=10) == ToolDone("call-2", ToolResult("hi\n", True))
        actor.tell(RunTool("call-3", "count", '{"text": 1}'))
        done = replies.get(timeout=10)
        assert done.call_id == "call-3" and not done.result.success
        assert "`text` should be of type string" in done.result.output
    finally:
        actor.stop()
        parent.stop()


# --- how clients show a call ----------------------------------------------------------------


def test_labels() -> None:
    assert TOOLS.label("terminal", {"command": "ls -la\necho more"}) == "$ ls -la"
    assert TOOLS.label("editor", {"command": "view", "path": "src/x.py"}) == "editor view src/x.py"
    assert TOOLS.label("plan", {"steps": ["a", "b"]}) == "plan (2 steps)"
    assert TOOLS.label("finish", {"summary": "Fixed it.\nDetails"}) == "finish: Fixed it."
    assert TOOLS.label("ask_user", {"question": "Which one?"}) == "ask_user: Which one?"
    assert TOOLS.label("terminal", "{not json") == 'terminal "{not json"'
    assert TOOLS.label("browse", {"url": "x"}) == 'browse {"url": "x"}'
    assert [name for name in BUILT_IN if TOOLS.quiet(name)] == ["plan", "ask_user", "finish"]
    registry = with_counter()
    assert registry.label("count", {"text": "a b"}) == 'count {"text": "a b"}'
    registry.register_external(
        "shout", "", {"type": "object"}, count, label=lambda a: f"shout {a.get('text', '')}!"
    )
    assert registry.label("shout", {"text": "hey"}) == "shout hey!"


def test_the_terminal_view_shows_calls_by_their_label() -> None:
    out = io.StringIO()
    registry = with_counter()
    view = HumanView(out, registry)
    calls = [
        ("terminal", {"command": "pytest -q"}),
        ("editor", {"command": "str_replace", "path": "calc.py"}),
        ("plan", {"steps": ["a"]}),
        ("count", {"text": "a b"}),
    ]
    for seq, (tool, arguments) in enumerate(calls):
        view.show(Event("t", seq, "tool_call", {"tool": tool, "input": arguments}, "now"))
    assert out.getvalue().splitlines() == [
        "$ pytest -q",
        "editor str_replace calc.py",
        'count {"text": "a b"}',
    ]
