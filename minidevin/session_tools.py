"""`GET /api/sessions/{id}/tools`: the tools a task of the session would get.

The built-in tools, and each MCP server's, found by starting the servers as a task
would (sandboxed in the session's working directory, still the one it claimed, with
its secrets; without network, as an `offline` task), listing their tools and
stopping them. A server that does not start is a problem in the answer.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minidevin.actors.children import tool_context
from minidevin.runtime import schemas
from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.mcp.servers import list_tools
from minidevin.runtime.redaction import Redactor
from minidevin.runtime.tools.registry import TOOLS
from minidevin.runtime.workspace_claims import working_directory_identity

if TYPE_CHECKING:
    from minidevin.api import Runtime


async def session_tools(runtime: Runtime, session: dict[str, Any]) -> schemas.SessionTools:
    """The session's tools (`session` is its row, the caller's own)."""
    tools = [
        schemas.SessionTool(
            name=tool["function"]["name"],
            description=tool["function"]["description"],
            input_schema=tool["function"]["parameters"],
            source="builtin",
        )
        for tool in TOOLS.schemas()
    ]
    if not session.get("mcp_config"):
        return schemas.SessionTools(tools=tools, problems=[])
    servers = json.loads(runtime.secrets.open(session["mcp_config"]))
    user_id = session["user_id"]
    identity = await working_directory_identity(
        runtime.workspaces,
        user_id,
        session["working_directory"],
        tenant=user_id != await runtime.owner(None),
    )
    names = await runtime.store.session_secret_names(session["id"])
    secrets = await runtime.secrets.values(user_id, names) if names else {}
    context = tool_context(
        Path(session["working_directory"]),
        runtime.settings,
        CancelToken(),
        "offline",
        f"tools-{session['id']}",
        workspace_identity=identity,
        secrets=secrets,
    )
    found, problems = await asyncio.to_thread(
        list_tools,
        servers,
        context,
        start_timeout=runtime.settings.mcp_start_timeout,
        allow_private=runtime.settings.mcp_allow_private,
    )
    mask = Redactor(secrets).text if secrets else str
    tools += [
        schemas.SessionTool(
            name=info.name,
            description=mask(info.description),
            input_schema=info.input_schema,
            source="mcp",
            server=info.server,
        )
        for info in found
    ]
    return schemas.SessionTools(
        tools=tools,
        problems=[schemas.ToolProblem(server=p.server, message=mask(p.message)) for p in problems],
    )
