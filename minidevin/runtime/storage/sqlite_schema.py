"""The SQLite schema as forward migrations; `PRAGMA user_version` is the version."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE COLLATE NOCASE,
        name TEXT NOT NULL,
        password_hash TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT
    );
    CREATE INDEX api_keys_user ON api_keys(user_id);
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        working_directory TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id, created_at);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        description TEXT NOT NULL,
        model TEXT NOT NULL,
        run_mode TEXT NOT NULL,
        max_iterations INTEGER NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        started_at TEXT,
        completed_at TEXT,
        iterations INTEGER NOT NULL DEFAULT 0,
        plan TEXT,
        result TEXT,
        usage TEXT
    );
    CREATE INDEX tasks_session ON tasks(session_id, created_at);
    CREATE INDEX tasks_status ON tasks(status);
    CREATE TABLE events (
        task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        PRIMARY KEY (task_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE artifacts (
        id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX artifacts_task ON artifacts(task_id);
    """,
    # 2: a cost budget per task
    """
    ALTER TABLE tasks ADD COLUMN max_cost_usd REAL;
    """,
    # 3: logout (revoked token ids), password change (token version), key chains
    """
    ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE api_keys ADD COLUMN parent_key_id TEXT;
    CREATE INDEX api_keys_parent ON api_keys(parent_key_id);
    CREATE TABLE revoked_tokens (
        jti TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
    # 4: working directories belong to the first user who opens a session on one; a
    # claim outlives the sessions (deleting them does not free the directory)
    """
    CREATE TABLE workspace_claims (
        path TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        st_dev TEXT NOT NULL,
        st_ino TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX workspace_claims_user ON workspace_claims(user_id);
    """,
    # 5: a task starts with its session's earlier tasks, or fresh; a resumed task's limits
    # grow by the ones it was created with (`max_iterations`/`max_cost_usd` are the totals)
    """
    ALTER TABLE tasks ADD COLUMN context TEXT NOT NULL DEFAULT 'session';
    ALTER TABLE tasks ADD COLUMN run_max_iterations INTEGER;
    ALTER TABLE tasks ADD COLUMN run_max_cost_usd REAL;
    """,
    # 6: the responses to `POST`s sent with an `Idempotency-Key`, per user, for a day: `key`
    # is a digest of the client's key and `body` is sealed with a key derived from it
    """
    CREATE TABLE idempotency_keys (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (user_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
    """,
    # 7: a user's secrets (values encrypted), the names a session hands its commands, a
    # session's webhook, and the durable outbox of webhook deliveries (one per task status
    # event: `seq` orders a task's deliveries, `body` is the exact bytes every attempt sends)
    """
    CREATE TABLE secrets (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value BLOB NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (user_id, name)
    ) WITHOUT ROWID;
    ALTER TABLE sessions ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE sessions ADD COLUMN webhook_url TEXT;
    ALTER TABLE sessions ADD COLUMN webhook_secret TEXT;
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        delivered_at TEXT,
        last_error TEXT
    );
    CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries(task_id, seq);
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries(delivered_at, next_attempt_at);
    """,
    # 8: approvals (a session's default policy, a task's own) and a session's MCP servers:
    # `mcp_servers` as the API shows them (values hidden), `mcp_config` whole and sealed
    """
    ALTER TABLE sessions ADD COLUMN approval_policy TEXT NOT NULL DEFAULT 'never';
    ALTER TABLE sessions ADD COLUMN mcp_servers TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE sessions ADD COLUMN mcp_config TEXT;
    ALTER TABLE tasks ADD COLUMN approval_policy TEXT NOT NULL DEFAULT 'never';
    """,
    # 9: with nodes, the node a session runs on
    """
    ALTER TABLE sessions ADD COLUMN node TEXT;
    CREATE INDEX sessions_node ON sessions(node);
    """,
    # 10: a working directory's owner (uid, gid) as claimed, which a takeover and, with
    # shared workspaces, every node compares (NULL: claimed before this version)
    """
    ALTER TABLE workspace_claims ADD COLUMN st_uid TEXT;
    ALTER TABLE workspace_claims ADD COLUMN st_gid TEXT;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
