"""The operations on sessions: create (here or on another node), list, read, list the tools
of, delete (a mixin of `Runtime`, over `TaskControl`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minidevin.actors.messages import StopAll
from minidevin.nodes import LOCAL
from minidevin.runtime import schemas
from minidevin.runtime.artifacts import remove_artifact_files
from minidevin.runtime.errors import NotFound, ValidationFailed
from minidevin.runtime.mcp.config import McpServer
from minidevin.runtime.pagination import Page, check_limit, decode_cursor
from minidevin.runtime.tools.sandbox import run_identity
from minidevin.runtime.webhooks import check_webhook_url
from minidevin.runtime.workspace_claims import claim_working_directory
from minidevin.session_tools import session_tools
from minidevin.task_control import TaskControl

if TYPE_CHECKING:
    import asyncio

    from minidevin.actors.messages import StopAll
    from minidevin.runtime.secrets_store import Secrets
    from minidevin.runtime.snapshot_warmer import SnapshotWarmer
    from minidevin.runtime.workspace import Workspaces


class SessionControl(TaskControl):
    """A mixin of `Runtime`, whose store, workspaces, secrets and session actors it uses."""

    workspaces: Workspaces
    secrets: Secrets
    warmer: SnapshotWarmer
    _sessions: dict[str, Any]
    _submitted: dict[str, int]

    async def _session_row(self, session_id: str, owner: str | None) -> dict[str, Any]:
        raise NotImplementedError  # (the Runtime's)

    def _session_lock(self, session_id: str) -> asyncio.Lock:
        raise NotImplementedError  # (the Runtime's)

    async def create_session(
        self,
        name: str,
        working_directory: str | Path,
        *,
        owner: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        secrets: list[str] | None = None,
        approval_policy: schemas.ApprovalPolicy = "never",
        mcp_servers: list[McpServer] | None = None,
        node: str | None = None,
    ) -> schemas.SessionCreated:
        """A session on `working_directory`, which becomes (or must already be) the user's;
        with nodes, on `node` (default: this one), where the directory must be.

        Every refusal but a malformed value (422) is the same 403, whether the directory
        is missing, forbidden, or another user's: it tells nothing about the host.
        """
        if node is not None and node != self.settings.node_id:
            if self.nodes is None:
                raise ValidationFailed(
                    f"node: no node {node} (this server is {self.settings.node_id})"
                )
            servers = [s.model_dump(mode="json") for s in (mcp_servers or [])]
            return await self.nodes.create_session_on(
                node, name=name, working_directory=str(working_directory),
                owner=await self.owner(owner), webhook_url=webhook_url,
                webhook_secret=webhook_secret, secrets=secrets,
                approval_policy=approval_policy, mcp_servers=servers,
            )  # fmt: skip
        if webhook_url is not None:  # 422 unless http(s) and (by default) a public address
            await check_webhook_url(webhook_url, self.settings.webhook_allow_private)
        user_id = await self.owner(owner)
        names = sorted(set(secrets or ()))
        if unknown := await self.secrets.missing(user_id, names):
            raise ValidationFailed(f"secrets: no secret named {', '.join(unknown)}")
        checked = await claim_working_directory(
            self.workspaces, user_id, str(working_directory), tenant=owner is not None
        )
        servers = schemas.MCP_SERVERS.validate_python(mcp_servers or [])  # (as a body's are)
        created = await self.store.insert_session(
            user_id,
            name,
            str(checked.path),
            webhook_url=webhook_url,
            webhook_secret=None if webhook_secret is None else self.secrets.seal(webhook_secret),
            secrets=names,
            approval_policy=approval_policy,
            mcp_servers=[server.shown() for server in servers],
            mcp_config=self.secrets.seal(json.dumps([s.model_dump() for s in servers]))
            if servers
            else None,
            node=None if self.nodes is None else self.settings.node_id,  # (it runs here)
        )
        run_as = run_identity(checked.path, self.settings.sandbox_uid)
        self.warmer.warm(checked.path, checked.identity, run_as)  # (before its first task)
        return created

    async def list_sessions(
        self, *, owner: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[schemas.SessionSummary]:
        """The user's sessions, newest first: all of them, or pages of `limit` (1 to 500)
        from `cursor` (a page's `next_cursor`; 422 when not one)."""
        limit, after = check_limit(limit), decode_cursor("sessions", cursor)
        return await self.store.list_sessions(await self.owner(owner), limit=limit, after=after)

    async def get_session(
        self, session_id: str, *, owner: str | None = None
    ) -> schemas.SessionDetail:
        detail = await self.store.session_detail(session_id, await self.owner(owner))
        if detail is None:
            raise NotFound("session not found")
        return detail

    async def session_tools(
        self, session_id: str, *, owner: str | None = None
    ) -> schemas.SessionTools:
        """The tools a task of the session would get (its MCP servers are started to list
        theirs, then stopped); MCP servers that failed are `problems`."""
        session = await self._session_row(session_id, owner)
        answer = await self._elsewhere(session_id, "session_tools", session_id=session_id,
                                       owner=session["user_id"])  # fmt: skip
        return answer if answer is not LOCAL else await session_tools(self, session)

    async def delete_session(self, session_id: str, *, owner: str | None = None) -> None:
        user_id = (await self._session_row(session_id, owner))["user_id"]
        answer = await self._elsewhere(session_id, "delete_session", session_id=session_id,
                                       owner=user_id)  # fmt: skip
        if answer is not LOCAL:
            return
        async with self._session_lock(session_id):  # no task is created or resumed meanwhile
            await self._session_row(session_id, owner)
            ref = self._sessions.pop(session_id, None)
            self._submitted.pop(session_id, None)
            if ref is not None:
                try:
                    await self._ask(ref, StopAll, "Session deleted")
                finally:
                    ref.stop(block=False)
            await self.store.flush()
            artifact_ids = await self.store.delete_session(session_id)
        remove_artifact_files(self.settings.artifacts_dir, artifact_ids)
