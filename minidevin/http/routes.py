"""REST handlers: thin translations from HTTP to the `Runtime` facade."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from minidevin import __version__
from minidevin.http.keys import PRINCIPAL, READ_CACHE, RUNTIME
from minidevin.http.ratelimit import RATE_HEADERS, RateLimited
from minidevin.runtime import schemas
from minidevin.runtime.auth import HashBusy
from minidevin.runtime.errors import ApiError, BadRequest, ValidationFailed
from minidevin.runtime.pagination import Page, parse_limit
from minidevin.runtime.providers.base import ProviderError
from minidevin.runtime.providers.registry import PROVIDERS
from minidevin.runtime.tools.sandbox import sandbox_status

M = TypeVar("M", bound=BaseModel)
routes = web.RouteTableDef()
READ_CACHE_SIZE = 10_000


async def body(request: web.Request, model: type[M], *, allow_empty: bool = False) -> M:
    """The request body validated as `model`; 422 naming the field otherwise.

    With `allow_empty`, no body at all reads as `{}` (every field optional).
    """
    raw = await request.read()
    if allow_empty and not raw.strip():
        raw = b"{}"
    try:
        data = json.loads(raw or b"null")
    except RecursionError:
        raise ValidationFailed("request body is not valid JSON") from None
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of over 4,300 digits
        if "integer string conversion" in str(exc):
            raise ValidationFailed("request body has a number too large to read") from None
        raise ValidationFailed("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValidationFailed("request body must be a JSON object")
    return model.model_validate(data)


def reply(model: BaseModel | list[Any], status: int = 200) -> web.Response:
    return web.json_response(schemas.dump(model), status=status)


def owner(request: web.Request) -> str:
    return request[PRINCIPAL].user_id


async def cached_reply(
    request: web.Request, key: tuple[str, ...], read: Callable[[], Awaitable[BaseModel]]
) -> web.Response:
    """`reply(await read())`, the JSON kept until the store's next write commits.

    Task and session details are what clients poll; events alone (tokens) do
    not change them, so a streaming task does not empty this cache.
    """
    runtime = request.app[RUNTIME]
    if runtime.nodes is not None:  # (other nodes' writes do not move this node's generation)
        return web.Response(body=json.dumps(schemas.dump(await read())).encode(),
                            content_type="application/json")  # fmt: skip
    store, cache = runtime.store, request.app[READ_CACHE]
    hit = cache.get(key)
    if hit is not None and hit[0] == store.generation:
        body = hit[1]
    else:
        generation = store.generation  # taken first: a write during the read re-reads
        body = json.dumps(schemas.dump(await read())).encode()
        if len(cache) >= READ_CACHE_SIZE:
            cache.clear()
        cache[key] = (generation, body)
    return web.Response(body=body, content_type="application/json")


# -- health, auth ----------------------------------------------------------------------


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    sandbox = sandbox_status().as_health(runtime.settings.sandbox)
    registration = runtime.accounts.registration_status()
    outage = runtime.store.outage
    store: dict[str, Any] = {"status": "ok"}
    if outage.down:  # (200 still: a restart now would lose what the store holds)
        store = {
            "status": "unavailable",
            "detail": outage.detail(),
            "held_events": runtime.store.held_events,
        }
    return reply(
        schemas.Health(
            status="degraded" if outage.down else "healthy",
            version=__version__,
            sandbox=sandbox,
            registration=registration,
            store=store,
            node={
                "id": runtime.settings.node_id,
                "backend": "postgresql" if runtime.settings.database_url else "sqlite",
                "live_tasks": runtime.slots.running(),
                "nodes": runtime.nodes is not None,
            },
        )
    )


async def _hashing(request: web.Request, work: Awaitable[M]) -> M:
    """`work` (which hashes a password); 429 with Retry-After when hashing is saturated."""
    try:
        return await work
    except HashBusy as exc:
        request[RATE_HEADERS] = {**request.get(RATE_HEADERS, {}), "Retry-After": "1"}
        raise RateLimited(str(exc)) from None


@routes.post("/api/auth/register")
async def register(request: web.Request) -> web.Response:
    data = await body(request, schemas.RegisterRequest)
    user = await _hashing(request, request.app[RUNTIME].accounts.register(data))
    return reply(user, 201)


@routes.post("/api/auth/login")
async def login(request: web.Request) -> web.Response:
    data = await body(request, schemas.LoginRequest)
    return reply(await _hashing(request, request.app[RUNTIME].accounts.login(data)))


@routes.post("/api/auth/logout")
async def logout(request: web.Request) -> web.Response:
    await request.app[RUNTIME].accounts.logout(request[PRINCIPAL])
    return web.Response(status=204)


@routes.post("/api/auth/password")
async def change_password(request: web.Request) -> web.Response:
    data = await body(request, schemas.PasswordChangeRequest)
    accounts = request.app[RUNTIME].accounts
    return reply(await _hashing(request, accounts.change_password(request[PRINCIPAL], data)))


@routes.post("/api/auth/api-keys")
async def create_api_key(request: web.Request) -> web.Response:
    request_body = await body(request, schemas.ApiKeyRequest)
    principal = request[PRINCIPAL]
    key = await request.app[RUNTIME].accounts.create_api_key(
        principal.user_id, request_body, principal
    )
    return reply(key, 201)


@routes.get("/api/auth/api-keys")
async def list_api_keys(request: web.Request) -> web.Response:
    return reply(await request.app[RUNTIME].accounts.list_api_keys(owner(request)))


@routes.delete("/api/auth/api-keys/{key_id}")
async def revoke_api_key(request: web.Request) -> web.Response:
    await request.app[RUNTIME].accounts.revoke_api_key(owner(request), request.match_info["key_id"])
    return web.Response(status=204)


# -- models and providers -------------------------------------------------------------


@routes.get("/api/models")
async def list_models(request: web.Request) -> web.Response:
    provider = request.query.get("provider")
    if provider is not None and provider not in PROVIDERS:
        raise ValidationFailed(f"provider: must be one of {', '.join(PROVIDERS)}")
    registry = request.app[RUNTIME].providers
    await registry.refresh()
    return web.json_response({"models": [asdict(model) for model in registry.models(provider)]})


@routes.get("/api/providers")
async def list_providers(request: web.Request) -> web.Response:
    registry = request.app[RUNTIME].providers
    await registry.refresh()
    providers = [
        {
            "id": provider,
            "name": name,
            "configured": registry.configured(provider),
            "models_count": len(registry.models(provider)),
        }
        for provider, name in PROVIDERS.items()
    ]
    runtime = request.app[RUNTIME]
    default = runtime.settings.default_model or registry.default_model()
    return web.json_response({"providers": providers, "default_model": default})


# -- sessions -----------------------------------------------------------------------------


def paged(request: web.Request, rows: Page[Any]) -> web.Response:
    """The page as today's JSON array; the next page's cursor in `X-Next-Cursor` and a
    `Link: <...>; rel="next"` (both absent on the last page)."""
    response = reply(rows)
    if rows.next_cursor is not None:
        following = request.rel_url.update_query(cursor=rows.next_cursor)
        response.headers["X-Next-Cursor"] = rows.next_cursor
        response.headers["Link"] = f'<{following}>; rel="next"'
    return response


def page_query(request: web.Request) -> dict[str, Any]:
    """`limit` (default 100, 1 to 500) and `cursor` from the query; 422 when invalid."""
    return {
        "limit": parse_limit(request.query.get("limit")),
        "cursor": request.query.get("cursor"),
    }


@routes.get("/api/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return paged(request, await runtime.list_sessions(owner=owner(request), **page_query(request)))


@routes.post("/api/sessions")
async def create_session(request: web.Request) -> web.Response:
    data = await body(request, schemas.SessionRequest)
    session = await request.app[RUNTIME].create_session(
        data.name,
        data.working_directory,
        owner=owner(request),
        webhook_url=data.webhook_url,
        webhook_secret=data.webhook_secret,
        secrets=data.secrets,
        approval_policy=data.approval_policy,
        mcp_servers=data.mcp_servers,
        node=data.node,
    )
    return reply(session, 201)


@routes.get("/api/sessions/{session_id}/tools")
async def session_tools(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return reply(
        await runtime.session_tools(request.match_info["session_id"], owner=owner(request))
    )


@routes.get("/api/sessions/{session_id}")
async def get_session(request: web.Request) -> web.Response:
    runtime, session_id, user = (
        request.app[RUNTIME],
        request.match_info["session_id"],
        owner(request),
    )
    return await cached_reply(
        request, ("session", session_id, user), lambda: runtime.get_session(session_id, owner=user)
    )


@routes.delete("/api/sessions/{session_id}")
async def delete_session(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    await runtime.delete_session(request.match_info["session_id"], owner=owner(request))
    return web.Response(status=204)


# -- tasks ------------------------------------------------------------------------------------


@routes.get("/api/sessions/{session_id}/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    runtime, session_id = request.app[RUNTIME], request.match_info["session_id"]
    return paged(
        request, await runtime.list_tasks(session_id, owner=owner(request), **page_query(request))
    )


@routes.post("/api/sessions/{session_id}/tasks")
async def create_task(request: web.Request) -> web.Response:
    data = await body(request, schemas.TaskRequest)
    runtime = request.app[RUNTIME]
    if data.model and data.model.startswith("replay:"):
        try:  # the whole recording, read as a task would (off the loop): refusals alike
            await asyncio.to_thread(runtime.providers.create, data.model)
        except ProviderError as exc:
            raise BadRequest(exc.message, code=exc.code) from None
    task = await runtime.create_task(request.match_info["session_id"], data, owner=owner(request))
    return reply(task, 201)


@routes.get("/api/tasks/{task_id}")
async def get_task(request: web.Request) -> web.Response:
    runtime, task_id, user = request.app[RUNTIME], request.match_info["task_id"], owner(request)
    return await cached_reply(
        request, ("task", task_id, user), lambda: runtime.get_task(task_id, owner=user)
    )


@routes.post("/api/tasks/{task_id}/stop")
async def stop_task(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return reply(await runtime.stop_task(request.match_info["task_id"], owner=owner(request)))


@routes.post("/api/tasks/{task_id}/input")
async def send_input(request: web.Request) -> web.Response:
    data = await body(request, schemas.InputRequest)
    runtime = request.app[RUNTIME]
    task_id = request.match_info["task_id"]
    if not await runtime.send_input(task_id, data.content, owner=owner(request)):
        raise ApiError(
            "the task is not running; input was not delivered", code="CONFLICT", status=409
        )
    return web.json_response({"id": task_id, "delivered": True}, status=202)


@routes.post("/api/tasks/{task_id}/approvals/{call_id}")
async def decide_approval(request: web.Request) -> web.Response:
    data = await body(request, schemas.ApprovalRequest)
    decided = await request.app[RUNTIME].decide_approval(
        request.match_info["task_id"],
        request.match_info["call_id"],
        data.decision,
        data.reason,
        owner=owner(request),
    )
    return reply(decided)


@routes.post("/api/tasks/{task_id}/resume")
async def resume_task(request: web.Request) -> web.Response:
    data = await body(request, schemas.ResumeRequest, allow_empty=True)
    runtime = request.app[RUNTIME]
    task = await runtime.resume_task(request.match_info["task_id"], data, owner=owner(request))
    return reply(task, 202)


# -- artifacts ----------------------------------------------------------------------------------


@routes.get("/api/tasks/{task_id}/artifacts")
async def list_artifacts(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return reply(await runtime.list_artifacts(request.match_info["task_id"], owner=owner(request)))


@routes.get("/api/tasks/{task_id}/artifacts/{artifact_id}")
async def download_artifact(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    row, path = await runtime.artifact_file(
        request.match_info["task_id"], request.match_info["artifact_id"], owner=owner(request)
    )
    return web.FileResponse(
        path,
        headers={
            "Content-Type": row["content_type"],
            "Content-Disposition": f'attachment; filename="{row["name"]}"',
        },
    )
