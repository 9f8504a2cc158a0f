"""The aiohttp application: middlewares, routes, and the runtime's lifecycle."""

from __future__ import annotations

from aiohttp import web

from minidevin.api import Runtime
from minidevin.http import console, metrics_routes, openapi, routes, secret_routes, websocket
from minidevin.http.access import access_middleware
from minidevin.http.idempotency import idempotency_middleware
from minidevin.http.keys import READ_CACHE, RUNTIME, WEBSOCKETS
from minidevin.http.middlewares import cors_middleware, errors_middleware
from minidevin.http.ratelimit import FixedWindowLimiter, add_rate_headers
from minidevin.http.websocket import OPEN_PER_USER, RATE_LIMITER


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> web.Application:
    """The app for `runtime`; with `manage_runtime` it starts and closes the runtime too."""
    settings = runtime.settings
    # REST requests and WebSocket messages count alike (in Redis, with nodes)
    limiter = FixedWindowLimiter(shared=lambda: runtime.nodes and runtime.nodes.bus.client)
    app = web.Application(
        middlewares=[
            cors_middleware(settings.cors_origins),
            metrics_routes.tracing_middleware,  # (a span sees the status errors give)
            errors_middleware,
            access_middleware(limiter),
            idempotency_middleware(),  # inside access: keys are per user
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[RUNTIME] = runtime
    runtime.providers.restrict_replay(settings.replay_dir)  # replay: over the API
    app[WEBSOCKETS] = set()
    app[RATE_LIMITER] = limiter
    app[OPEN_PER_USER] = {}
    app[READ_CACHE] = {}
    app.add_routes(routes.routes)
    app.add_routes(secret_routes.routes)
    app.add_routes(websocket.routes)
    app.add_routes(openapi.routes)
    app.add_routes(console.routes)
    metrics_routes.setup(app)  # /metrics; traces when OTEL_EXPORTER_OTLP_ENDPOINT is set
    app.on_response_prepare.append(add_rate_headers)
    app.on_shutdown.append(websocket.close_all)
    if manage_runtime:

        async def start_runtime(app: web.Application) -> None:
            await app[RUNTIME].start()

        async def close_runtime(app: web.Application) -> None:
            await app[RUNTIME].close()

        app.on_startup.append(start_runtime)
        app.on_cleanup.append(close_runtime)
    return app
