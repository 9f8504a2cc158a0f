"""The API's request and response shapes, as pydantic models.

Shared by the HTTP layer and the embedding API: what a REST client reads is
what an embedding program gets back.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from minidevin.runtime.auth import MAX_PASSWORD_BYTES
from minidevin.runtime.mcp.config import McpServer
from minidevin.runtime.variables import unsafe_name

TaskStatus = Literal[
    "queued", "running", "waiting_input", "waiting_approval", "completed", "failed", "stopped"
]
# which terminal and editor calls wait for a person's approval (`runtime/approvals.py`)
ApprovalPolicy = Literal["never", "risky", "always"]
StepStatus = Literal["pending", "in_progress", "completed", "failed", "skipped"]
RunMode = Literal["offline", "online"]

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
# the embedded local user's domain (`local@minidevin.invalid`): never registered over HTTP
RESERVED_EMAIL_DOMAIN = "minidevin.invalid"


def normalize_email(value: str) -> str:
    """One spelling per address: NFKC, case folded, without surrounding spaces.

    `José` typed precomposed (NFC) or decomposed (NFD) is one account.
    """
    folded = unicodedata.normalize("NFKC", value.strip()).casefold()
    return unicodedata.normalize("NFKC", folded)


def has_control_characters(value: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in value)


def _email(value: str) -> str:
    if has_control_characters(value):
        raise ValueError("must not contain control characters")
    value = normalize_email(value)
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValueError("not a valid email address")
    return value


def _login_email(value: str) -> str:
    return normalize_email(value)


def _password(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    if not value.strip():
        raise ValueError("must not be only whitespace")
    if len(value.encode(errors="replace")) > MAX_PASSWORD_BYTES:
        raise ValueError(f"must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


def _distinct_names(servers: list[Any]) -> list[Any]:
    names = [server.name for server in servers]
    if len(set(names)) != len(names):
        raise ValueError("each MCP server needs its own name")
    return servers


# a session's MCP servers (at most 16, each its own name); `MCP_SERVERS` checks them alone
McpServers = Annotated[list[McpServer], Field(max_length=16), AfterValidator(_distinct_names)]
MCP_SERVERS: TypeAdapter[list[McpServer]] = TypeAdapter(McpServers)
Email = Annotated[str, AfterValidator(_email)]  # checked raw, then normalized
Password = Annotated[str, Field(min_length=8), AfterValidator(_password)]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_not_blank)]


class Body(BaseModel):
    """Request bodies: unknown fields are ignored, known ones are strict.

    Strict: `"5"` is not an integer, `1` is not a string nor `true`; a float
    field still takes an integer, and a timestamp field an ISO 8601 string.
    """

    model_config = ConfigDict(extra="ignore", str_max_length=100_000, strict=True)


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- auth --------------------------------------------------------------------


class RegisterRequest(Body):
    email: Email
    password: Password
    name: Name


class LoginRequest(Body):
    email: Annotated[str, Field(min_length=1, max_length=254), AfterValidator(_login_email)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class PasswordChangeRequest(Body):
    current_password: Annotated[str, Field(min_length=1, max_length=1024)]
    new_password: Password
    revoke_api_keys: bool = False


class ApiKeyRequest(Body):
    name: Name
    expires_at: Annotated[datetime | None, Field(strict=False)] = None

    def expiry_utc(self) -> datetime | None:
        if self.expires_at is None:
            return None
        if self.expires_at.tzinfo is None:
            return self.expires_at.replace(tzinfo=UTC)
        return self.expires_at.astimezone(UTC)


class User(Out):
    id: str
    email: str
    name: str
    created_at: str


class AccessToken(Out):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class ApiKey(Out):
    id: str
    name: str
    created_at: str
    expires_at: str | None


class ApiKeyCreated(ApiKey):
    key: str


# -- secrets -------------------------------------------------------------------


def _safe_variable(name: str) -> str:
    if unsafe_name(name):
        raise ValueError(f"{name} cannot be a secret's name: it would change how programs start")
    return name


SecretName = Annotated[
    str,
    Field(pattern=r"^[A-Z_][A-Z0-9_]*$", min_length=1, max_length=128),
    AfterValidator(_safe_variable),
]


class SecretRequest(Body):
    name: SecretName
    value: Annotated[str, Field(min_length=4, max_length=65_536)]  # (shorter: not maskable)


class SecretInfo(Out):
    """A secret as the API shows it: never its value."""

    name: str
    created_at: str
    updated_at: str


# -- sessions ------------------------------------------------------------------


class SessionRequest(Body):
    name: Name
    working_directory: Annotated[str, Field(min_length=1, max_length=4096)]
    webhook_url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    webhook_secret: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    # the user's secrets its commands get as environment variables (masked everywhere)
    secrets: Annotated[list[SecretName], Field(max_length=64)] = []
    approval_policy: ApprovalPolicy = "never"  # its tasks' default
    mcp_servers: McpServers = []
    # with nodes: the node it runs on (its working directory must be there); default: this one
    node: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None


class McpServerShown(Out):
    """A session's MCP server as the API shows it (values of `env` and `headers` hidden)."""

    model_config = ConfigDict(extra="allow")
    name: str
    transport: Literal["stdio", "http"]


class SessionTool(Out):
    name: str
    description: str
    input_schema: dict[str, Any]
    source: Literal["builtin", "mcp"]
    server: str | None = None  # the MCP server's name


class ToolProblem(Out):
    server: str
    message: str


class SessionTools(Out):
    """The tools a task of the session would get; `problems`: MCP servers that failed."""

    tools: list[SessionTool]
    problems: list[ToolProblem]


class SessionSummary(Out):
    id: str
    name: str
    status: str
    created_at: str
    updated_at: str
    task_count: int


class SessionCreated(Out):
    id: str
    name: str
    status: str
    working_directory: str
    created_at: str


class TaskBrief(Out):
    id: str
    description: str
    status: TaskStatus


class SessionDetail(Out):
    id: str
    name: str
    status: str
    working_directory: str
    created_at: str
    updated_at: str
    approval_policy: ApprovalPolicy = "never"
    mcp_servers: list[McpServerShown] = []
    tasks: list[TaskBrief]


# -- tasks ---------------------------------------------------------------------


class TaskRequest(Body):
    description: Annotated[str, Field(min_length=1, max_length=20_000), AfterValidator(_not_blank)]
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    run_mode: RunMode = "offline"
    max_iterations: Annotated[int, Field(ge=1, le=1000)] | None = None
    max_cost_usd: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)] | None = None
    # "session": the task starts knowing the session's earlier tasks; "fresh": it does not
    context: Literal["session", "fresh"] = "session"
    approval_policy: ApprovalPolicy | None = None  # None: the session's


class ResumeRequest(Body):
    message: (
        Annotated[str, Field(min_length=1, max_length=20_000), AfterValidator(_not_blank)] | None
    ) = None
    max_iterations: Annotated[int, Field(ge=1, le=1000)] | None = None
    max_cost_usd: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)] | None = None


class PlanStep(Out):
    id: str
    description: str
    status: StepStatus


class Plan(Out):
    steps: list[PlanStep] = []


class TaskResult(Out):
    success: bool
    summary: str


class Usage(Out):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # the provider reported no usage: counted approximately (about 4 characters a token)
    estimated: bool = False


class TaskCreated(Out):
    id: str
    description: str
    status: TaskStatus
    created_at: str


class TaskSummary(Out):
    id: str
    description: str
    status: TaskStatus
    created_at: str
    completed_at: str | None
    iterations: int


class TaskDetail(TaskSummary):
    session_id: str
    model: str
    run_mode: RunMode
    max_iterations: int
    max_cost_usd: float | None
    context: Literal["session", "fresh"] = "session"
    approval_policy: ApprovalPolicy = "never"
    started_at: str | None
    plan: Plan
    result: TaskResult | None
    usage: Usage
    node_id: str | None = None  # the node its session runs on (with nodes, any may answer)


class TaskStopped(Out):
    id: str
    status: TaskStatus


class ApprovalRequest(Body):
    decision: Literal["approve", "reject"]
    reason: Annotated[str, Field(max_length=10_000)] | None = None


class ApprovalDecided(Out):
    call_id: str
    decision: Literal["approve", "reject"]


class InputRequest(Body):
    content: Annotated[str, Field(min_length=1, max_length=100_000)]


# -- artifacts and the rest -------------------------------------------------------


class Artifact(Out):
    id: str
    name: str
    type: str
    size: int
    created_at: str


class Health(Out):
    status: str
    version: str
    sandbox: dict[str, Any] | None = None
    registration: Literal["open", "closed"] | None = None
    # "ok", or "unavailable" (with why, and the events held) while it cannot commit
    store: dict[str, Any] | None = None
    node: dict[str, Any] | None = None  # this node: id, backend, live tasks


class ErrorBody(Out):
    detail: str
    code: str
    timestamp: str


def dump(model: BaseModel | list[Any]) -> Any:
    """JSON-ready data for a model or a list of models."""
    if isinstance(model, list):
        return [item.model_dump(mode="json") for item in model]
    return model.model_dump(mode="json")


# -- response shapes the HTTP layer builds by hand (documented in the OpenAPI document) ------


class ModelEntry(Out):
    id: str
    name: str
    provider: str
    context_window: int
    supports_vision: bool
    supports_function_calling: bool


class ModelList(Out):
    models: list[ModelEntry]


class ProviderEntry(Out):
    id: str
    name: str
    configured: bool
    models_count: int


class ProviderList(Out):
    providers: list[ProviderEntry]
    default_model: str


class InputAccepted(Out):
    id: str
    delivered: bool
