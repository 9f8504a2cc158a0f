"""`/api/secrets`: a user's secrets (names and dates out, values only in)."""

from __future__ import annotations

from aiohttp import web

from minidevin.http.keys import RUNTIME
from minidevin.http.routes import body, owner, reply
from minidevin.runtime import schemas
from minidevin.runtime.errors import ValidationFailed

routes = web.RouteTableDef()


@routes.post("/api/secrets")
async def put_secret(request: web.Request) -> web.Response:
    data = await body(request, schemas.SecretRequest)
    info = await request.app[RUNTIME].secrets.put(owner(request), data.name, data.value)
    return reply(info, 201)


@routes.get("/api/secrets")
async def list_secrets(request: web.Request) -> web.Response:
    return reply(await request.app[RUNTIME].secrets.list(owner(request)))


@routes.delete("/api/secrets/{name}")
async def delete_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if len(name) > 128:
        raise ValidationFailed("name: at most 128 characters")
    await request.app[RUNTIME].secrets.delete(owner(request), name)
    return web.Response(status=204)
