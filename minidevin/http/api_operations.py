"""The API's routes as a declarative table (`OPERATIONS`), kept next to `routes.py` (a
test checks both list the same routes); `openapi.py` builds the document from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from minidevin.http.idempotency import (
    HEADER,
    MAX_KEY_LENGTH,
    REPLAYED,
    TTL_SECONDS,
    WAIT_SECONDS,
)
from minidevin.runtime import schemas
from minidevin.runtime.providers.registry import PROVIDERS

OPENAPI_PATH = "/api/openapi.json"
REF = "#/components/schemas/{model}"
AUTHENTICATED = ({"bearerAuth": []}, {"apiKeyAuth": []})
PUBLIC = ()
ERRORS = {
    400: "Bad request (e.g. the model's provider is not configured)",
    401: "Missing or invalid credentials",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Request body too large",
    422: "Validation error: the detail names the offending field",
    429: "Rate limited",
    500: "Internal server error",
    503: "Service unavailable: the store cannot take writes (STORE_UNAVAILABLE), or tasks "
    "need a command sandbox that is missing",
}
STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content"}


@dataclass(frozen=True)
class Param:
    name: str
    location: Literal["path", "query", "header"]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    status: int
    response: type[BaseModel] | None = None
    many: bool = False  # the response is a JSON array of `response`
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    security: tuple[dict[str, list[str]], ...] = AUTHENTICATED
    query: tuple[Param, ...] = ()
    description: str | None = None
    content: dict[str, Any] | None = None  # a non-JSON success response


PATH_PARAMETERS = {
    "session_id": "A session id",
    "task_id": "A task id",
    "artifact_id": "An artifact id (from the task's artifact list)",
    "key_id": "An API key id (from the key list)",
    "name": "A secret's name",
    "call_id": "The `call_id` of the tool call (from its `approval_request` event)",
}
PROVIDER = Param(
    "provider", "query", "Only this provider's models", {"type": "string", "enum": list(PROVIDERS)}
)
TOKEN = Param(
    "token",
    "query",
    "A JWT access token, for clients that cannot set headers on a WebSocket handshake",
)
AFTER = Param(
    "after",
    "query",
    "Resume after this event seq (the last one received); 0 replays the whole history",
    {"type": "string", "pattern": "^[0-9]{1,18}$", "default": "0"},
)
LIMIT = Param(
    "limit",
    "query",
    "At most this many items (1 to 500); the next page's cursor comes in the `X-Next-Cursor` "
    'header and a `Link: <...>; rel="next"` header, both absent on the last page',
    {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
)
CURSOR = Param("cursor", "query", "Start after the previous page: its `X-Next-Cursor` (opaque)")
PAGED = (LIMIT, CURSOR)
PAGE_HEADERS = {
    "X-Next-Cursor": {
        "description": "The next page's `cursor`; absent on the last page",
        "schema": {"type": "string"},
    },
    "Link": {
        "description": 'The next page\'s URL, as `<...>; rel="next"`; absent on the last page',
        "schema": {"type": "string"},
    },
}
IDEMPOTENCY_KEY = Param(
    HEADER,
    "header",
    f"Makes a retry safe: the same key from the same user within {TTL_SECONDS // 3600} hours "
    f"answers the first request's response again (with `{REPLAYED}: true`) and does nothing "
    "else; the same key with another body or route is 422 `IDEMPOTENCY_KEY_REUSED`; while the "
    "first request is still being answered a retry waits for it (409 `CONFLICT` after "
    f"{WAIT_SECONDS:g} s). Only successes are remembered. 1 to {MAX_KEY_LENGTH} visible ASCII "
    "characters (a UUID will do).",
    {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[!-~]+$"},
)
REPLAYED_HEADERS = {
    REPLAYED: {
        "description": f"`true` when this is the remembered response to an earlier request "
        f"with the same `{HEADER}`; absent otherwise",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
AUTH = (401, 429, 500, 503)  # (authenticating reads the store)
BODY = (413, 422)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get", "/health", "health", "Check that the API is running", "health", 200,
        schemas.Health, errors=(500,), security=PUBLIC,
    ),
    Operation(
        "get", "/metrics", "get_metrics", "Prometheus metrics (text exposition format)",
        "health", 200, errors=(401, 500), security=PUBLIC,
        content={"text/plain": {"schema": {"type": "string"}}},
        description="Public unless `MINIDEVIN_METRICS_TOKEN` is set; then it takes that "
        "token as `Authorization: Bearer <token>`. Never rate-limited.",
    ),
    Operation(
        "get", OPENAPI_PATH, "get_openapi", "This OpenAPI document", "health", 200,
        errors=(429, 500), security=PUBLIC,
        content={"application/json": {"schema": {"type": "object"}}},
    ),
    Operation(
        "post", "/api/auth/register", "register", "Register a new user", "auth", 201,
        schemas.User, body=schemas.RegisterRequest, errors=(403, 409, *BODY, 429, 500, 503),
        security=PUBLIC,
        description="Emails are normalized (NFKC, case folded, trimmed); control characters, "
        "a NUL or all-whitespace password, and the reserved domain `minidevin.invalid` are "
        "refused (422). Without a command sandbox the server serves one user: registration "
        "closes after the first (403 `REGISTRATION_CLOSED`). Limited per client address and "
        "per email (`MINIDEVIN_RATE_LIMIT_LOGIN` a minute), whatever credentials are sent.",
    ),
    Operation(
        "post", "/api/auth/login", "login", "Authenticate and receive a JWT", "auth", 200,
        schemas.AccessToken, body=schemas.LoginRequest, errors=(*AUTH, *BODY), security=PUBLIC,
        description="Limited per client address and per email (`MINIDEVIN_RATE_LIMIT_LOGIN` a "
        "minute), whatever credentials are sent; 429 with `Retry-After` also when too many "
        "password checks wait already.",
    ),
    Operation(
        "post", "/api/auth/logout", "logout", "Revoke the access token of this request", "auth",
        204, errors=(400, *AUTH),
        description="The JWT sent is refused from now on. With an API key: 400 (revoke keys "
        "with `DELETE /api/auth/api-keys/{key_id}`).",
    ),
    Operation(
        "post", "/api/auth/password", "change_password", "Change your password", "auth", 200,
        schemas.AccessToken, body=schemas.PasswordChangeRequest, errors=(403, *AUTH, *BODY),
        description="Every access token issued before is refused from now on (and, with "
        "`revoke_api_keys`, every API key); the answer is a fresh token. A wrong "
        "`current_password` is 403 `WRONG_PASSWORD`. Limited like login.",
    ),
    Operation(
        "post", "/api/auth/api-keys", "create_api_key", "Create an API key", "auth", 201,
        schemas.ApiKeyCreated, body=schemas.ApiKeyRequest, errors=(*AUTH, *BODY),
        description="The key itself (`key`) is shown only in this response. A key created "
        "with an API key expires no later than that key, and revoking that key revokes it.",
    ),
    Operation(
        "get", "/api/auth/api-keys", "list_api_keys", "List your API keys", "auth", 200,
        schemas.ApiKey, many=True, errors=AUTH,
    ),
    Operation(
        "delete", "/api/auth/api-keys/{key_id}", "revoke_api_key", "Revoke an API key", "auth",
        204, errors=(*AUTH, 404),
        description="At once: the next request with the key is refused (401).",
    ),
    Operation(
        "post", "/api/secrets", "put_secret", "Store a secret", "secrets", 201,
        schemas.SecretInfo, body=schemas.SecretRequest, errors=(*AUTH, *BODY),
        description="Encrypted at rest; the same name again replaces the value (its "
        "`created_at` is kept). The value is never returned.",
    ),
    Operation(
        "get", "/api/secrets", "list_secrets", "List your secrets (names and dates only)",
        "secrets", 200, schemas.SecretInfo, many=True, errors=AUTH,
    ),
    Operation(
        "delete", "/api/secrets/{name}", "delete_secret", "Delete a secret", "secrets", 204,
        errors=(*AUTH, 404, 422),
    ),
    Operation(
        "get", "/api/models", "list_models", "List the available LLM models", "models", 200,
        schemas.ModelList, errors=(*AUTH, 422), query=(PROVIDER,),
    ),
    Operation(
        "get", "/api/providers", "list_providers", "List the LLM providers", "models", 200,
        schemas.ProviderList, errors=AUTH,
    ),
    Operation(
        "get", "/api/sessions", "list_sessions", "List your sessions", "sessions", 200,
        schemas.SessionSummary, many=True, errors=(*AUTH, 422), query=PAGED,
        description="Newest first, in pages of `limit` (default 100).",
    ),
    Operation(
        "post", "/api/sessions", "create_session", "Create a session", "sessions", 201,
        schemas.SessionCreated, body=schemas.SessionRequest, errors=(*AUTH, 403, *BODY),
        description="`working_directory` must be an absolute path (422 otherwise) to an "
        "existing directory that is not `/`, a system directory, the server's data directory "
        "or installation (nor inside or around them), strictly inside a workspace root when "
        "roots are configured, and not on, inside or around another user's working directory "
        "(the first user to open a session on a directory keeps it, also after deleting the "
        "session). Every refusal is the same 403 `working_directory is not available`, "
        "whether the directory is missing or forbidden.",
    ),
    Operation(
        "get", "/api/sessions/{session_id}", "get_session", "Get a session", "sessions", 200,
        schemas.SessionDetail, errors=(*AUTH, 404),
    ),
    Operation(
        "get", "/api/sessions/{session_id}/tools", "session_tools",
        "List the tools a task of this session would get", "sessions", 200,
        schemas.SessionTools, errors=(*AUTH, 403, 404),
        description="The built-in tools and each MCP server's (`mcp__<server>__<tool>`), "
        "found by starting the session's MCP servers as a task would, then stopping them; "
        "a server that does not start within `MINIDEVIN_MCP_START_TIMEOUT` is in `problems`.",
    ),
    Operation(
        "delete", "/api/sessions/{session_id}", "delete_session",
        "Delete a session, stopping its tasks", "sessions", 204, errors=(*AUTH, 404),
    ),
    Operation(
        "get", "/api/sessions/{session_id}/tasks", "list_tasks", "List a session's tasks",
        "tasks", 200, schemas.TaskSummary, many=True, errors=(*AUTH, 404, 422), query=PAGED,
        description="Oldest first, in pages of `limit` (default 100).",
    ),
    Operation(
        "post", "/api/sessions/{session_id}/tasks", "create_task",
        "Create and start (or queue) a task", "tasks", 201, schemas.TaskCreated,
        body=schemas.TaskRequest, errors=(*AUTH, 400, 403, 404, *BODY),
        description="400 `WORKSPACE_CHANGED` when the session's working directory is no "
        "longer the directory it was opened on (removed, replaced, or a symbolic link put "
        "in its path); a task queued meanwhile fails with that `error` when it starts.",
    ),
    Operation(
        "get", "/api/tasks/{task_id}", "get_task", "Get a task", "tasks", 200,
        schemas.TaskDetail, errors=(*AUTH, 404),
    ),
    Operation(
        "post", "/api/tasks/{task_id}/stop", "stop_task", "Stop a task", "tasks", 200,
        schemas.TaskStopped, errors=(*AUTH, 404),
        description="An ended task keeps, and answers, its final status.",
    ),
    Operation(
        "post", "/api/tasks/{task_id}/input", "send_input", "Send input to a running task",
        "tasks", 202, schemas.InputAccepted, body=schemas.InputRequest,
        errors=(*AUTH, 404, 409, *BODY),
        description="Answers the task's question, or queues a message for its next model "
        "turn; 409 if the task is not running.",
    ),
    Operation(
        "post", "/api/tasks/{task_id}/resume", "resume_task", "Resume a failed or stopped task",
        "tasks", 202, schemas.TaskDetail, body=schemas.ResumeRequest,
        errors=(*AUTH, 400, 403, 404, 409, *BODY),
        description="Continues a task that ended `failed` or `stopped`: the same task id, its "
        "event `seq` goes on, its conversation is rebuilt from its log; a tool call the end cut "
        "short is answered as interrupted, then `message` (if any) goes to the model. It may "
        "take `max_iterations` more model turns (default: as many as it was created with) and "
        "spend `max_cost_usd` more (default: its original budget again). 409 `CONFLICT` for a "
        "task that is queued, running, waiting for input or completed (continue a completed "
        "task with a follow-up task in its session).",
    ),
    Operation(
        "post", "/api/tasks/{task_id}/approvals/{call_id}", "decide_approval",
        "Approve or reject a tool call that waits", "tasks", 200, schemas.ApprovalDecided,
        body=schemas.ApprovalRequest, errors=(*AUTH, 404, 409, *BODY),
        description="For a task whose `approval_policy` made a call wait (an "
        "`approval_request` event, status `waiting_approval`): `approve` runs it, `reject` "
        "answers it as rejected with `reason` and the agent goes on. 404 for a call never put "
        "to a person; 409 when it was already decided or the task is not waiting on it.",
    ),
    Operation(
        "get", "/api/tasks/{task_id}/artifacts", "list_artifacts", "List a task's artifacts",
        "artifacts", 200, schemas.Artifact, many=True, errors=(*AUTH, 404),
    ),
    Operation(
        "get", "/api/tasks/{task_id}/artifacts/{artifact_id}", "download_artifact",
        "Download an artifact", "artifacts", 200, errors=(*AUTH, 404),
        description="The artifact's bytes, with its own Content-Type and a "
        "`Content-Disposition: attachment` header.",
        content={
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "*/*": {"schema": {}},
        },
    ),
    Operation(
        "get", "/ws/tasks/{task_id}", "task_stream", "Stream a task's events (WebSocket)",
        "websocket", 101, errors=(400, *AUTH, 403, 404, 422), query=(TOKEN, AFTER),
        security=(*AUTHENTICATED, {}),
        description=(
            "Upgrades to a WebSocket (send `Connection: Upgrade`, `Upgrade: websocket`): the "
            "task's event history after `after`, then its live events, as JSON messages: "
            "`components/schemas/TaskStreamMessage` (one schema per `type`; `tool_call` and "
            "`tool_result` share a `call_id`). "
            "Authenticate with `Authorization: Bearer`, `X-API-Key`, or `?token=<jwt>`; "
            "without any of them the answer is 401. A request that is not a WebSocket "
            "handshake is answered 400. Client messages: `{\"type\": \"stop\"}`, "
            "`{\"type\": \"input\", \"content\": \"...\"}`, `{\"type\": \"approve\", "
            "\"call_id\": \"...\"}` and `{\"type\": \"reject\", \"call_id\": \"...\", "
            "\"reason\": \"...\"}`. Close codes: 1000 the task "
            "ended, 1001 the server is shutting down, 4008 the client fell too far behind "
            "(reconnect with `?after=<last seq>`)."
        ),
    ),
)  # fmt: skip
