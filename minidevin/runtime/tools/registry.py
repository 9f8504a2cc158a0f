"""One registry of the tools the model may call, each declared once as a `ToolSpec`.

A spec gives the tool's name, description, argument model (from which come the
JSON schema sent to the model, the validation of what it sends and the message
for bad arguments), where it runs (`"task"`: the TaskActor handles it itself;
`"tools"`: a ToolActor executes it) and how clients show a call (`label`, and
`quiet` for a call shown by its effect: the plan, the question, the summary).

`TOOLS` holds the five built-in tools. `ToolRegistry.register_external` adds a
tool known only by a raw JSON schema (an MCP server's, say) and a function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from minidevin.runtime.tools.base import (
    NonBlank,
    ToolArguments,
    ToolContext,
    ToolError,
    ToolResult,
    arguments_error,
    decode_object,
    settle,
)
from minidevin.runtime.tools.editor import EditorTool
from minidevin.runtime.tools.terminal import TerminalTool

RunsIn = Literal["task", "tools"]
StepStatus = Literal["pending", "in_progress", "completed", "failed", "skipped"]
STEP_STATUSES: tuple[str, ...] = get_args(StepStatus)
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what OpenAI and Anthropic accept


class Executor(Protocol):
    """What a ToolActor calls: `run` with the validated arguments."""

    def run(self, arguments: Any, context: ToolContext) -> ToolResult: ...


@dataclass(frozen=True)
class ToolSpec:
    """One tool, declared once. `executor` makes a fresh executor for each ToolActor
    (the editor keeps its undo history per task); only `"tools"` tools have one."""

    name: str
    description: str
    arguments: type[ToolArguments]
    runs_in: RunsIn
    label: Callable[[dict[str, Any]], str]
    quiet: bool = False
    executor: Callable[[], Executor] | None = None

    def __post_init__(self) -> None:
        if not TOOL_NAME.fullmatch(self.name):
            raise ValueError(f"tool name {self.name!r}: 1-64 of letters, digits, '_', '-'")
        if (self.runs_in == "tools") != (self.executor is not None):
            raise ValueError(f"tool {self.name!r}: an executor exactly when it runs in 'tools'")

    def schema(self) -> dict[str, Any]:
        """The tool as a Chat Completions `tools` entry (providers convert it)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.arguments.tool_schema(),
            },
        }


class ToolRegistry:
    """The tools of a runtime, in the order the model is shown them."""

    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ToolSpec) -> ToolSpec:
        if spec.name in self._specs:
            raise ValueError(f"a tool named {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def register_external(
        self,
        name: str,
        description: str,
        schema: Mapping[str, Any],
        run: Callable[[dict[str, Any], ToolContext], ToolResult],
        label: Callable[[dict[str, Any]], str] | None = None,
    ) -> ToolSpec:
        """A tool known by a raw JSON schema (sent to the model as it is) and a function
        that gets the checked arguments as a dict; it runs in a ToolActor."""
        model = external_arguments(name, schema)
        return self.register(
            ToolSpec(
                name=name,
                description=description,
                arguments=model,
                runs_in="tools",
                label=label or (lambda arguments: default_label(name, arguments)),
                executor=lambda: ExternalExecutor(model, run),
            )
        )

    # -- what the model is told ----------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def schemas(self) -> list[dict[str, Any]]:
        """Every tool as a Chat Completions `tools` entry."""
        return [spec.schema() for spec in self._specs.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def spec(self, name: str) -> ToolSpec:
        """The tool's spec; `ToolError` naming the tools if there is none."""
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self._specs)
            raise ToolError(f"unknown tool {name!r}; the tools are: {known}") from None

    def runs_in(self, name: str) -> RunsIn | None:
        """`"task"`, `"tools"`, or None for an unknown tool."""
        spec = self._specs.get(name)
        return spec.runs_in if spec is not None else None

    # -- what the model sends ------------------------------------------------------------

    def parse(self, name: str, raw_arguments: str | None) -> Any:
        """The call's raw JSON arguments validated by the tool's model; `ToolError` (a
        message for the model) for an unknown tool, bad JSON, a non-object, bad fields."""
        spec = self.spec(name)
        return spec.arguments.of(decode_object(raw_arguments, name), name)

    def executors(self) -> dict[str, Executor]:
        """A fresh executor for each `"tools"` tool: what one ToolActor holds."""
        return {
            name: spec.executor() for name, spec in self._specs.items() if spec.executor is not None
        }

    def execute(
        self,
        name: str,
        raw_arguments: str | None,
        context: ToolContext,
        executors: Mapping[str, Executor],
    ) -> ToolResult:
        """Parse and run one call with `executors`; every failure is a failed result the
        model can read (only `Cancelled` propagates)."""

        def call() -> ToolResult:
            arguments = self.parse(name, raw_arguments)
            executor = executors.get(name)
            if executor is None:
                raise ToolError(f"tool {name!r} is not run by the tool runner")
            return executor.run(arguments, context)

        return settle(call)

    # -- how clients show a call -----------------------------------------------------------

    def label(self, name: str, arguments: Any) -> str:
        """A one-line label for a call (`$ ls -la`, `editor view src/x.py`); `arguments`
        as the client sees them: the object, or the raw text when it was not one."""
        spec = self._specs.get(name)
        if spec is not None and isinstance(arguments, dict):
            try:
                text = spec.label(arguments)
            except Exception:  # a label never breaks a view
                text = ""
            if text:
                return _one_line(text)
        return default_label(name, arguments)

    def quiet(self, name: str) -> bool:
        """Whether clients show the call by its effect rather than as a line."""
        spec = self._specs.get(name)
        return spec is not None and spec.quiet


def default_label(name: str, arguments: Any) -> str:
    return _one_line(f"{name} {json.dumps(arguments, default=str)}")


def _one_line(text: str) -> str:
    return (text.splitlines() or [""])[0]


# -- the TaskActor's own tools -------------------------------------------------------------------


class PlanStep(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # an echoed `id` is harmless

    description: str
    status: StepStatus = "pending"


class PlanArguments(ToolArguments):
    steps: list[PlanStep] = Field(
        min_length=1, description="Every step, in order, with its current status."
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _plain_strings(cls, value: Any) -> Any:
        """A step given as a plain string is its description, pending."""
        if isinstance(value, list):
            return [{"description": s} if isinstance(s, str) else s for s in value]
        return value

    def to_plan(self) -> dict[str, Any]:
        """`{"steps": [{id, description, status}]}`; step ids are `step-N` by position."""
        return {
            "steps": [
                {"id": f"step-{n}", "description": step.description, "status": step.status}
                for n, step in enumerate(self.steps, start=1)
            ]
        }


class AskUserArguments(ToolArguments):
    question: NonBlank = Field(description="The question for the user.")


class FinishArguments(ToolArguments):
    summary: NonBlank = Field(description="What was done.")
    success: bool = Field(True, description="Whether the task succeeded.")

    def result(self) -> dict[str, Any]:
        return {"success": self.success, "summary": self.summary}


# -- tools known only by a JSON schema -----------------------------------------------------------

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


class ExternalArguments(ToolArguments):
    """Arguments of a tool known by a raw JSON schema, which is sent to the model as it
    is. The check is light: required properties, top-level types and enums, and unknown
    properties when `additionalProperties` is false; the tool itself checks the rest."""

    model_config = ConfigDict(extra="allow", strict=True)
    raw_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    @classmethod
    def tool_schema(cls) -> dict[str, Any]:
        return cls.raw_schema

    @classmethod
    def of(cls, arguments: Mapping[str, Any] | Self, tool: str = "") -> Self:
        if isinstance(arguments, cls):
            return arguments
        schema = cls.raw_schema
        properties: dict[str, Any] = schema.get("properties") or {}
        problems: list[tuple[tuple[Any, ...], str]] = [
            ((name,), "is required") for name in schema.get("required", ()) if name not in arguments
        ]
        for name, value in arguments.items():
            rule = properties.get(name)
            if rule is None:
                if schema.get("additionalProperties") is False:
                    problems.append(((name,), "is not an argument of this tool"))
                continue
            problem = _json_problem(rule, value) if isinstance(rule, dict) else None
            if problem:
                problems.append(((name,), problem))
        if problems:
            raise ToolError(arguments_error(tool, problems, properties))
        return cls.model_validate(dict(arguments))

    def values(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _json_problem(rule: dict[str, Any], value: Any) -> str | None:
    kinds = rule.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if isinstance(kinds, list) and kinds:
        known = [kind for kind in kinds if kind in _JSON_TYPES]
        if known and not any(_JSON_TYPES[kind](value) for kind in known):
            return f"should be of type {' or '.join(known)} (got {json.dumps(value)[:60]})"
    if "enum" in rule and value not in rule["enum"]:
        options = ", ".join(json.dumps(option) for option in rule["enum"])
        return f"should be one of {options} (got {json.dumps(value)[:60]})"
    return None


def external_arguments(name: str, schema: Mapping[str, Any]) -> type[ExternalArguments]:
    """An argument model carrying `schema` (a JSON object schema)."""
    raw = dict(schema)
    if raw.get("type", "object") != "object":
        raise ValueError(f"tool {name!r}: the arguments' schema must describe an object")
    if not isinstance(raw.get("properties", {}), dict):
        raise ValueError(f"tool {name!r}: `properties` must be an object")
    raw.pop("$schema", None)
    raw = {"type": "object", "properties": {}, **raw}
    title = "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
    return type(f"{title}Arguments", (ExternalArguments,), {"raw_schema": raw})


class ExternalExecutor:
    """Runs an external tool's function with its checked arguments as a dict."""

    def __init__(
        self,
        model: type[ExternalArguments],
        run: Callable[[dict[str, Any], ToolContext], ToolResult],
    ) -> None:
        self.model = model
        self._run = run

    def run(self, arguments: Any, context: ToolContext) -> ToolResult:
        return self._run(self.model.of(arguments).values(), context)


# -- the built-in tools --------------------------------------------------------------------------


def default_registry() -> ToolRegistry:
    """A registry of the five built-in tools (a fresh one: registering more changes only it)."""
    return ToolRegistry(
        [
            ToolSpec(
                name=TerminalTool.name,
                description=TerminalTool.description,
                arguments=TerminalTool.arguments,
                runs_in="tools",
                label=lambda a: f"$ {a.get('command', '')}",
                executor=TerminalTool,
            ),
            ToolSpec(
                name=EditorTool.name,
                description=EditorTool.description,
                arguments=EditorTool.arguments,
                runs_in="tools",
                label=lambda a: f"editor {a.get('command', '?')} {a.get('path', '')}",
                executor=EditorTool,
            ),
            ToolSpec(
                name="plan",
                description="Set the plan: the whole list of steps with their status. Call it "
                "again with the full list whenever a step's status changes.",
                arguments=PlanArguments,
                runs_in="task",
                label=lambda a: f"plan ({len(a['steps'])} steps)",
                quiet=True,
            ),
            ToolSpec(
                name="ask_user",
                description="Ask the user a question and wait for the answer.",
                arguments=AskUserArguments,
                runs_in="task",
                label=lambda a: f"ask_user: {a.get('question', '')}",
                quiet=True,
            ),
            ToolSpec(
                name="finish",
                description="End the task with a summary of what was done and whether it "
                "succeeded.",
                arguments=FinishArguments,
                runs_in="task",
                label=lambda a: f"finish: {a.get('summary', '')}",
                quiet=True,
            ),
        ]
    )


TOOLS = default_registry()
