"""`GET /api/sessions/{id}/tools`: the tools a task of the session would get.

The built-in tools, and each MCP server's, found by starting the servers as a task
would (sandboxed in the session's working directory, still the one it claimed, with
its secrets; without network, as an `offline` task), listing their tools and
stopping them. A server that does not start is a problem in the answer.
"""

from __future__ import annotations

import asyncio
import functools
import json
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minidevin.actors.children import tool_context
from minidevin.runtime import schemas
from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.mcp.config import hidden_values
from minidevin.runtime.mcp.servers import list_tools
from minidevin.runtime.redaction import Redactor
from minidevin.runtime.tools.registry import TOOLS
from minidevin.runtime.workspace_claims import working_directory_identity

if TYPE_CHECKING:
    from minidevin.api import Runtime

# listings wait on servers for up to `mcp_start_timeout`: never on the loop's own executor
_LISTING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mcp-tools")
_LOCKS: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


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
    masked = {**secrets, **hidden_values(servers)}  # (before any server can log a value)
    mask = Redactor(masked).text if masked else str
    listing = functools.partial(
        list_tools,
        servers,
        context,
        start_timeout=runtime.settings.mcp_start_timeout,
        allow_private=runtime.settings.mcp_allow_private,
    )
    lock = _LOCKS.setdefault(session["id"], asyncio.Lock())
    async with lock:  # one listing of a session at a time, on threads of its own
        found, problems = await asyncio.get_running_loop().run_in_executor(_LISTING, listing)
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
