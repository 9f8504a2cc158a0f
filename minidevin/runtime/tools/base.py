"""What every tool is: an argument model (the JSON schema the model sees, and the
validation of what it sends) plus an executor.

`ToolArguments` is the base of every argument model; `arguments_error` turns a
validation failure into one message the model can act on; `decode_object`
reads the model's raw argument string; `settle` runs a call so that refusals
and crashes become failed results. The registry (`registry.py`) puts it together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from minidevin.runtime.cancel import Cancelled, CancelToken


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call, as the model and the WebSocket client see it."""

    output: str
    success: bool


class ToolError(Exception):
    """A tool call the tool refuses (bad arguments, path outside the workspace...).

    Becomes a `ToolResult(success=False)` whose output is this message, so the
    model can correct itself.
    """


@dataclass
class ToolContext:
    """What a tool executor may use: the workspace, the task's cancel token, limits.

    With `sandbox`, terminal commands run under bubblewrap (see `sandbox.wrap`):
    without network unless `network`, and with `hidden_paths` (the server's data
    directory) covered by an empty tmpfs.
    """

    working_directory: Path
    cancel: CancelToken = field(default_factory=CancelToken)
    default_timeout: float = 120.0
    max_timeout: float = 1800.0
    output_limit: int = 16_000
    env: dict[str, str] | None = None
    sandbox: bool = False
    network: bool = True
    hidden_paths: tuple[Path, ...] = ()
    # the working directory's (st_dev, st_ino) as checked when the session was created:
    # re-checked before every call, so a directory swapped for a link is refused
    workspace_identity: tuple[int, int] | None = None
    # who commands (and the editor's file writes) run as; None: the server's own uid
    uid: int | None = None
    gid: int | None = None
    task_id: str = ""
    memory_mb: int = 2048
    pids: int = 256
    cpus: float = 1.0
    tmp_mb: int = 512
    read_paths: tuple[Path, ...] = ()
    # the session's secrets (`runtime/redaction.Redactor`): output cut in two is trimmed
    # at the cut so no part of a value is left unmasked there
    redactor: Any = None
    # the server's data directory: names the cgroups of its commands (see cgroups.py)
    data_dir: Path | None = None


# -- arguments ---------------------------------------------------------------------------------

MAX_PROBLEMS = 5  # a message lists at most this many problems


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonBlank = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]


class ToolArguments(BaseModel):
    """A tool's arguments. Strict (no "10" for 10, no 1 for true) and closed (a misspelt
    argument is an error the model sees); `tool_schema` is what the model is sent."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @classmethod
    def tool_schema(cls) -> dict[str, Any]:
        """The JSON schema sent to the model: generated from the fields, compacted."""
        return compact_schema(cls.model_json_schema())

    @classmethod
    def of(cls, arguments: Mapping[str, Any] | Self, tool: str = "") -> Self:
        """`arguments` validated (an instance passes through); `ToolError` if invalid."""
        if isinstance(arguments, cls):
            return arguments
        try:
            return cls.model_validate(dict(arguments))
        except ValidationError as exc:
            raise ToolError(arguments_error(tool, _problems(exc), cls.model_fields)) from None


def _problems(exc: ValidationError) -> list[tuple[tuple[Any, ...], str]]:
    problems = []
    for error in exc.errors(include_url=False):
        kind, loc = error["type"], tuple(error["loc"])
        if kind == "missing":
            text = "is required"
        elif kind == "extra_forbidden":
            text = "is not an argument of this tool"
        elif kind == "value_error":
            text = str(error.get("ctx", {}).get("error", error["msg"]))
        else:
            text = error["msg"][:1].lower() + error["msg"][1:]
            text += f" (got {_shown(error.get('input'))})"
        problems.append((loc, text))
    return problems


def arguments_error(
    tool: str, problems: list[tuple[tuple[Any, ...], str]], known: Iterable[str] = ()
) -> str:
    """One message for a failed validation: each problem at its place (`steps[0].status`)."""
    parts = []
    for loc, text in problems[:MAX_PROBLEMS]:
        place = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        parts.append(f"`{place.lstrip('.')}` {text}" if place else text)
    if len(problems) > MAX_PROBLEMS:
        parts.append(f"and {len(problems) - MAX_PROBLEMS} more")
    message = f"{_prefix(tool)}{'; '.join(parts)}"
    if any(text == "is not an argument of this tool" for _, text in problems) and known:
        message += f" (its arguments are: {', '.join(known)})"
    return message


def _prefix(tool: str) -> str:
    return f"invalid arguments for tool {tool!r}: " if tool else "invalid arguments: "


def _shown(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def decode_object(raw: str | None, tool: str = "") -> dict[str, Any]:
    """The model's raw argument string as a dict (empty: `{}`); `ToolError` otherwise."""
    if raw is None or not raw.strip():
        return {}
    again = "; send the arguments as a single JSON object"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg}: line {exc.lineno} column {exc.colno}"
        raise ToolError(f"{_prefix(tool)}not valid JSON ({where}){again}") from None
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "a number")
        raise ToolError(f"{_prefix(tool)}expected a JSON object, got {kind}{again}")
    return value


def compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema without `$defs`/`$ref` (inlined), `title`s, `default: null`,
    and with an optional field's `anyOf [X, null]` as plain X: what providers take best."""
    definitions = schema.get("$defs", {})

    def clean(node: Any) -> Any:
        if isinstance(node, list):
            return [clean(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            inlined = dict(definitions[node["$ref"].rsplit("/", 1)[-1]])
            inlined.update({k: v for k, v in node.items() if k != "$ref"})
            node = inlined
        options = node.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options and len(options) == 2:
            (only,) = [option for option in options if option != {"type": "null"}]
            node = {**{k: v for k, v in node.items() if k != "anyOf"}, **only}
        out = {}
        for key, value in node.items():
            if key in ("title", "$defs") or (key == "default" and value is None):
                continue
            if key == "properties" and isinstance(value, dict):  # names, not keywords
                out[key] = {name: clean(inner) for name, inner in value.items()}
            else:
                out[key] = value if key in ("enum", "const", "default") else clean(value)
        return out

    return clean(schema)


# -- executing -----------------------------------------------------------------------------------


class Tool(Protocol):
    """An executing tool: `name`, `description`, `arguments` (its model), and `run`.

    `run` executes one call with arguments already decoded (a dict, validated
    through the model, or a model instance). It may raise `ToolError` for
    refusals; any other exception is a crash that `settle` turns into a failed result.
    """

    name: str
    description: str
    arguments: ClassVar[type[ToolArguments]]

    def run(self, arguments: Any, context: ToolContext) -> ToolResult: ...


def settle(call: Callable[[], ToolResult]) -> ToolResult:
    """Run one tool call: a `ToolError` or a crash becomes a failed result the model can
    read; only `Cancelled` propagates."""
    try:
        return call()
    except Cancelled:
        raise
    except ToolError as exc:
        return ToolResult(output=str(exc), success=False)
    except Exception as exc:
        return ToolResult(output=f"tool crashed: {type(exc).__name__}: {exc}", success=False)


def tool_schema(tool: Any) -> dict[str, Any]:
    """The tool (a spec or a tool with an `arguments` model) as a Chat Completions entry."""
    model = getattr(tool, "arguments", None)
    parameters = model.tool_schema() if model is not None else tool.parameters
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": parameters},
    }
