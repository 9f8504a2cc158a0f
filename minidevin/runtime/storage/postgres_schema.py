"""The PostgreSQL schema as forward migrations; the `schema_version` table is the version.

The columns keep what the SQLite store returns: timestamps as ISO 8601 text,
JSON as text (decoded by the store, exactly as SQLite's), Unix times as double
precision, blobs as bytea. Every text column compares and sorts byte by byte
(`COLLATE "C"`, SQLite's BINARY): keyset pages on `created_at` and the prefix
ranges of workspace claims must not depend on the server's locale. `rowid`
(an identity column) stands in for SQLite's rowid where the store pages or
orders by insertion. Emails are unique without regard to case (SQLite's
`COLLATE NOCASE`) through an index on `lower(email)`.

`migrate` applies what is missing in one transaction under an advisory lock,
so several processes starting at once migrate once.
"""

from __future__ import annotations

import asyncpg

from minidevin.runtime.storage.interface import StoreError

# pg_advisory_xact_lock key of the migrations ("minidevi" as a 64-bit integer)
MIGRATION_LOCK = 0x6D696E6964657669

_INITIAL = """
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    password_hash TEXT,
    created_at TEXT NOT NULL,
    token_version BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX users_email ON users (lower(email));
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    parent_key_id TEXT
);
CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_parent ON api_keys (parent_key_id);
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE sessions (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    working_directory TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    secrets TEXT NOT NULL DEFAULT '[]',
    webhook_url TEXT,
    webhook_secret TEXT,
    approval_policy TEXT NOT NULL DEFAULT 'never',
    mcp_servers TEXT NOT NULL DEFAULT '[]',
    mcp_config TEXT
);
CREATE INDEX sessions_user ON sessions (user_id, created_at);
CREATE TABLE tasks (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    description TEXT NOT NULL,
    model TEXT NOT NULL,
    run_mode TEXT NOT NULL,
    max_iterations BIGINT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    iterations BIGINT NOT NULL DEFAULT 0,
    plan TEXT,
    result TEXT,
    usage TEXT,
    max_cost_usd DOUBLE PRECISION,
    context TEXT NOT NULL DEFAULT 'session',
    run_max_iterations BIGINT,
    run_max_cost_usd DOUBLE PRECISION,
    approval_policy TEXT NOT NULL DEFAULT 'never'
);
CREATE INDEX tasks_session ON tasks (session_id, created_at);
CREATE INDEX tasks_status ON tasks (status);
CREATE TABLE events (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
CREATE TABLE artifacts (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX artifacts_task ON artifacts (task_id);
CREATE TABLE workspace_claims (
    path TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    st_dev TEXT NOT NULL,
    st_ino TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX workspace_claims_user ON workspace_claims (user_id);
CREATE TABLE idempotency_keys (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
CREATE TABLE secrets (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value BYTEA NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (user_id, name)
);
CREATE TABLE webhook_deliveries (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    delivered_at TEXT,
    last_error TEXT
);
CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries (task_id, seq);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (delivered_at, next_attempt_at);
"""


def _bytewise(ddl: str) -> str:
    """Every text column of `ddl` compared byte by byte (SQLite's BINARY collation)."""
    return ddl.replace(" TEXT", ' TEXT COLLATE "C"')


# the schema of the SQLite store's version 8, as PostgreSQL's version 1; then as SQLite's 9;
# then PostgreSQL's own
MIGRATIONS: tuple[str, ...] = (
    _bytewise(_INITIAL),
    # 2 (SQLite's 9): with nodes, the node a session runs on
    _bytewise(
        """
        ALTER TABLE sessions ADD COLUMN node TEXT;
        CREATE INDEX sessions_node ON sessions(node);
        """
    ),
    # 3 (PostgreSQL only): what every node reads — artifact contents; and each node's
    # generation, which fences the writes of a node that was taken over
    _bytewise(
        """
        CREATE TABLE artifact_contents (
            artifact_id TEXT PRIMARY KEY REFERENCES artifacts(id) ON DELETE CASCADE,
            content BYTEA NOT NULL
        );
        -- (uncompressed out of line: a download reads it in parts, each part read alone)
        ALTER TABLE artifact_contents ALTER COLUMN content SET STORAGE EXTERNAL;
        CREATE TABLE node_generations (
            node TEXT PRIMARY KEY,
            generation BIGINT NOT NULL
        );
        """
    ),
    # 4 (SQLite's 10): a working directory's owner (uid, gid) as claimed, which a takeover
    # and, with shared workspaces, every node compares (NULL: claimed before this version)
    _bytewise(
        """
        ALTER TABLE workspace_claims ADD COLUMN st_uid TEXT;
        ALTER TABLE workspace_claims ADD COLUMN st_gid TEXT;
        """
    ),
    # 5 (PostgreSQL only): which node (at which generation) took each run of a task
    _bytewise(
        """
        CREATE TABLE task_claims (
            task_id TEXT PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
            node TEXT,
            generation BIGINT
        );
        """
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


async def schema_version(conn: asyncpg.Connection) -> int:
    """The database's schema version (0: none yet)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(max(version), 0) FROM schema_version"))


async def migrate(conn: asyncpg.Connection, where: str) -> list[int]:
    """Bring the database at `where` (host:port/database, for messages) up to
    `SCHEMA_VERSION`; the versions applied. `StoreError` if it is newer."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(_VERSION_TABLE)
        version = await schema_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database {where} has schema version {version}, newer than this "
                f"minidevin understands ({SCHEMA_VERSION}); upgrade minidevin or use "
                "another database"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[number - 1])
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
            applied.append(number)
    return applied
