"""Every setting, in one pydantic model, read from the environment.

Settings take the `MINIDEVIN_` prefix (`MINIDEVIN_DATA_DIR`, ...); `CORS_ORIGINS`
keeps the name the API document gives it. Provider credentials use each SDK's
standard variables and are read by the provider registry, not here.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "MINIDEVIN_"
MIN_JWT_SECRET_BYTES = 32
DEFAULT_CORS_ORIGINS = ("http://localhost:5173", "http://localhost:3000")


class SettingsError(ValueError):
    """A setting from the environment that does not parse; names the variable."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    data_dir: Path = Field(Path("data"), description="Database, artifacts and generated secrets.")
    workspace_roots: tuple[Path, ...] = Field(
        (),
        description="Where working directories of API users may be; empty: inside the "
        "system's temporary directory only (the local user of `minidevin run`: anywhere "
        "not forbidden).",
    )
    jwt_secret: str | None = Field(None, description="HS256 secret; generated when unset.")
    jwt_ttl_seconds: int = Field(
        3600, ge=60, le=7 * 24 * 3600, description="Lifetime of an access token (`expires_in`)."
    )
    default_model: str | None = Field(None, description="Model used when a task names none.")
    max_iterations: int = Field(
        50, ge=1, le=1000, description="Default iteration limit of a task (model turn + its tools)."
    )
    max_concurrent_tasks: int = Field(
        8, ge=1, le=10_000, description="Tasks running at once across all sessions; others queue."
    )
    command_timeout: float = Field(120.0, gt=0, description="Default seconds per terminal call.")
    max_command_timeout: float = Field(
        1800.0, gt=0, description="Upper bound for a timeout the model asks for."
    )
    tool_output_limit: int = Field(16_000, ge=1000, description="Characters kept per tool output.")
    provider_timeout: float = Field(600.0, gt=0, description="Seconds one model request may take.")
    provider_max_attempts: int = Field(
        5, ge=1, le=20, description="Attempts per model turn (429, 5xx, timeouts, drops)."
    )
    provider_retry_base_delay: float = Field(
        0.5, ge=0, description="First backoff delay; doubles per attempt, with jitter."
    )
    provider_retry_max_delay: float = Field(30.0, ge=0, description="Cap of one backoff delay.")
    provider_retry_total: float = Field(
        120.0, ge=0, description="Cap of all backoff delays of one turn together."
    )
    provider_max_retry_delay: float = Field(
        120.0, ge=0, description="Longest provider Retry-After honoured (longer: the turn fails)."
    )
    provider_stall_seconds: float = Field(
        60.0, gt=0, description="A model stream silent this long is retried as a stalled turn."
    )
    max_turn_output_bytes: int = Field(
        1 << 20, ge=1024, description="A model turn's text and tool arguments, at most."
    )
    azure_deployments: tuple[str, ...] = Field(
        (), description="Azure OpenAI deployment names, listed as `azure/<name>` models."
    )
    model_prices: dict[str, tuple[float, float]] = Field(
        {}, description='JSON {"model": [USD per 1M input tokens, per 1M output]}; overrides.'
    )
    context_windows: dict[str, int] = Field(
        {}, description='JSON {"model": tokens}; overrides the catalog\'s context windows.'
    )
    session_idle_seconds: float = Field(
        300.0, gt=0, description="An idle session's actor stops after this; it returns on demand."
    )
    resume_interrupted: bool = Field(
        False,
        description="Resume the tasks a stopped server left live (after their INTERRUPTED "
        "error), at the next start, in their sessions' order.",
    )
    store_retry_seconds: float = Field(
        10.0,
        ge=0,
        description="How long writes wait out a locked or full database before failing; "
        "a live task holds its events that long, then stops with STORE_UNAVAILABLE.",
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        description="Finished tasks older than this are deleted with their events and "
        "artifacts; unset: keep forever.",
    )
    token_coalesce_ms: float = Field(
        20.0,
        ge=0,
        le=20,
        description="Token deltas of a turn arriving within this are logged as one `token` "
        "event (the text is the same); 0: one event a delta.",
    )
    secrets_key: str | None = Field(
        None,
        description="Key (Fernet, urlsafe base64 of 32 bytes) that encrypts stored secrets; "
        "unset: generated into DATA_DIR/secrets_key, mode 0600.",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs that resolve to private, loopback or link-local "
        "addresses (tests, on-premises).",
    )
    webhook_max_attempts: int = Field(
        8, ge=1, description="Attempts per webhook delivery before it is given up."
    )
    webhook_retry_base_delay: float = Field(
        1.0, gt=0, description="First delay before a failed webhook delivery is retried; doubles."
    )
    webhook_retry_max_delay: float = Field(
        300.0, gt=0, description="Longest delay between two attempts of a webhook delivery."
    )
    webhook_timeout: float = Field(
        10.0, gt=0, description="Seconds one webhook delivery attempt may take."
    )
    mcp_start_timeout: float = Field(
        20.0,
        gt=0,
        description="Seconds a session's MCP servers may take to start and list "
        "their tools; a server not ready by then is left out of the task (MCP_SERVER_FAILED).",
    )
    mcp_allow_private: bool = Field(
        False,
        description="Allow MCP server URLs that resolve to private, loopback or link-local "
        "addresses (tests, on-premises).",
    )
    sandbox: str = Field(
        "auto",
        pattern="^(auto|required|off)$",
        description="bubblewrap for terminal commands: auto (use it where it works), "
        "required (refuse tasks without it), off.",
    )
    sandbox_uid: int = Field(
        65534,
        ge=1,
        le=2**31 - 2,
        description="Uid (and gid) that commands run as when the working directory is "
        "owned by root; a root-owned working directory is handed to it at session creation.",
    )
    sandbox_read_paths: tuple[Path, ...] = Field(
        (), description="Extra host paths commands may read (besides /usr, /etc, ...)."
    )
    sandbox_memory_mb: int = Field(
        2048, ge=16, description="Memory limit of one task's commands together (MiB)."
    )
    sandbox_pids: int = Field(256, ge=8, description="Process limit of one task's commands.")
    sandbox_cpus: float = Field(1.0, gt=0, description="CPU limit of one task's commands (cores).")
    sandbox_tmp_mb: int = Field(
        512, ge=1, description="Size of a command's private /tmp (MiB), counted as its memory."
    )
    allow_unsandboxed_multiuser: bool = Field(
        False,
        description="Without a working sandbox, keep registration open after the first user.",
    )
    replay_dir: Path | None = Field(
        None, description="Where `replay:` models named over the API may be read; unset: refused."
    )
    max_tasks_per_user: int = Field(
        4, ge=1, le=10_000, description="Tasks of one user running at once; the rest queue."
    )
    max_pending_inputs: int = Field(
        16, ge=1, description="User inputs a task holds before it reads them; more are refused."
    )
    max_websockets_per_user: int = Field(
        32, ge=1, description="WebSockets one user may hold open at once."
    )
    rate_limit_login: int = Field(
        10,
        ge=0,
        description="Login and register attempts a minute per client address and per account; "
        "0: off.",
    )
    password_hash_concurrency: int = Field(
        1, ge=1, description="Password hashes (bcrypt) computed at once; more wait their turn."
    )
    password_hash_queue: int = Field(
        16, ge=1, description="Logins that may wait for a hash; beyond, 429 at once."
    )
    request_head_timeout: float = Field(
        5.0, gt=0, description="Seconds a connection has to send a whole request head."
    )
    max_connections_per_address: int = Field(
        64, ge=1, description="Open connections one client address may hold."
    )
    max_diff_mb: int = Field(
        20, ge=1, description="Largest `diff.patch` (MiB); beyond, cut with the files left out."
    )
    rate_limit_authenticated: int = Field(
        100, ge=0, description="Requests a minute per user or API key; 0 turns it off."
    )
    rate_limit_anonymous: int = Field(
        10, ge=0, description="Requests a minute per client address without credentials; 0: off."
    )
    trust_forwarded_for: bool = Field(
        False, description="Behind a trusted proxy: take the client address from X-Forwarded-For."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    subscriber_queue_size: int = Field(
        10_000, ge=10, description="Events a WebSocket may lag behind before it is cut off (4008)."
    )
    ws_send_timeout: float = Field(
        10.0, gt=0, description="A WebSocket send that does not finish in this is cut (4008/abort)."
    )
    trace_join_callers: bool = Field(
        False,
        description="With tracing on, a request joins its caller's trace (`traceparent`); "
        "off, it starts a trace of its own linked to the caller's span (a client cannot "
        "write into another trace or force sampling). On only behind callers you trust.",
    )
    metrics_token: str | None = Field(
        None,
        description="Bearer token `GET /metrics` requires (Prometheus' `authorization`); "
        "unset: the metrics are public.",
    )
    cors_origins: tuple[str, ...] = Field(
        DEFAULT_CORS_ORIGINS, description="Comma-separated browser origins allowed; `*` for any."
    )
    sync: str = Field(
        "normal",
        pattern="^(normal|full)$",
        description="Durability of what clients are told: normal (survives the process's "
        "death, kill -9 included: SQLite synchronous=NORMAL, artifact files written before "
        "the final status) or full (also a power cut: synchronous=FULL, artifact files "
        "fsynced in groups).",
    )
    public_url: str | None = Field(
        None,
        description="The URL users reach the server at, when a proxy serves it under a path "
        "(e.g. https://example.com/minidevin): the console's links and its WebSocket origin.",
    )
    database_url: str | None = Field(
        None,
        pattern=r"^postgres(ql)?://",
        description="postgresql://user:password@host:port/database selects the PostgreSQL "
        "store; unset: SQLite in the data directory.",
    )
    redis_url: str | None = Field(
        None,
        pattern=r"^rediss?://",
        description="redis://host:port/db: with MINIDEVIN_DATABASE_URL, this server is one node "
        "of several sharing the database: live events and task commands go between nodes.",
    )
    node_id: str = Field(
        default_factory=lambda: socket.gethostname()[:64] or "node",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="This node's name among the nodes (letters, digits, . _ -); sessions run on "
        "the node that created them.",
    )
    lease_seconds: float = Field(
        15.0,
        ge=1.0,
        le=600.0,
        description="With nodes: a node that has not renewed its lease for this long is taken "
        "for dead; another takes over its sessions (it renews every third of it).",
    )
    shared_workspaces: bool = Field(
        False,
        description="With nodes: working directories are on storage every node mounts at the "
        "same path (NFS, ...): any node may take over a session whose node is down or gone, "
        "its directory recognised by path (no symbolic link on it), inode and the "
        "directory's owner uid and gid (the device number may differ between machines), and "
        "checked as a new session's directory with the taking node's settings.",
    )
    host: str = Field("127.0.0.1", description="Address `minidevin serve` listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port `minidevin serve` listens on.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: str = Field(
        "auto", pattern="^(auto|json|console)$", description="JSON unless stderr is a terminal."
    )

    @field_validator("jwt_secret", mode="after")
    @classmethod
    def _long_jwt_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_JWT_SECRET_BYTES} bytes")
        return value

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("workspace_roots", "sandbox_read_paths", mode="after")
    @classmethod
    def _absolute_roots(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        return tuple(root.expanduser().resolve() for root in value)

    @field_validator("replay_dir", mode="after")
    @classmethod
    def _absolute_replay_dir(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default `os.environ`), then `overrides`."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if name == "cors_origins":
                raw = environ.get("CORS_ORIGINS", raw)
            if raw is None or raw == "":
                continue
            if field.annotation in (tuple[Path, ...],):
                values[name] = [p for p in raw.replace(",", os.pathsep).split(os.pathsep) if p]
            elif field.annotation in (tuple[str, ...],):
                values[name] = [p.strip() for p in raw.split(",") if p.strip()]
            elif str(field.annotation).startswith("dict"):
                try:
                    values[name] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise SettingsError(f"{_env_name(name)}: not valid JSON ({exc.msg})") from None
            else:
                values[name] = raw
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{_env_name(str(err['loc'][0]))}: {err['msg']}" for err in exc.errors()
            )
            raise SettingsError(f"invalid settings: {problems}") from None

    @property
    def database_path(self) -> Path:
        return self.data_dir / "minidevin.sqlite3"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"


def _env_name(field: str) -> str:
    return "CORS_ORIGINS" if field == "cors_origins" else ENV_PREFIX + field.upper()


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for docs and `--help`."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else "(computed)"
        if isinstance(default, tuple):
            default = ",".join(str(d) for d in default)
        rows.append((_env_name(name), str(default), field.description or ""))
    return rows
