"""What an operator watches: `GET /metrics` for Prometheus, and the requests' trace spans.

`/metrics` is the Prometheus text format: the process-wide counters and
histograms (`runtime/metrics.py`) and this app's runtime gauges. With
`MINIDEVIN_METRICS_TOKEN` set it needs `Authorization: Bearer <that token>`
(401 otherwise); unset, it is public. It lies outside `/api/`, so the API's
rate limits never count it.

When tracing is on (`runtime/tracing.py`), each `/api/` request is a server
span, current while its handler runs: the parent of the task it creates.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import pykka
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from minidevin.http.keys import RUNTIME
from minidevin.runtime import metrics, tracing
from minidevin.runtime.errors import Unauthorized

METRICS_PATH = "/metrics"
RUNTIME_METRICS = web.AppKey("runtime_metrics", CollectorRegistry)
RUNTIME_COLLECTOR = web.AppKey("runtime_collector", metrics.RuntimeCollector)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
routes = web.RouteTableDef()


def setup(app: web.Application) -> None:
    """Add `/metrics` over `app`'s runtime; turn tracing on if the environment asks."""
    runtime = app[RUNTIME]
    app[RUNTIME_METRICS], app[RUNTIME_COLLECTOR] = metrics.runtime_registry(
        runtime, lambda: len(pykka.ActorRegistry.get_all())
    )
    app.add_routes(routes)
    tracing.enable_from_environment()


@routes.get(METRICS_PATH)
async def get_metrics(request: web.Request) -> web.Response:
    _check_token(request)
    await request.app[RUNTIME_COLLECTOR].refresh()
    body = generate_latest(metrics.REGISTRY) + generate_latest(request.app[RUNTIME_METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _check_token(request: web.Request) -> None:
    expected = request.app[RUNTIME].settings.metrics_token
    if not expected:  # (unset: public)
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(errors="surrogateescape"), expected.encode()
    ):
        raise Unauthorized("metrics need 'Authorization: Bearer <MINIDEVIN_METRICS_TOKEN>'")


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With tracing on, an `/api/` request is a server span (its route, method, status)."""
    if not tracing.enabled() or not request.path.startswith(tracing.TRACED_PATHS):
        return await handler(request)
    resource = request.match_info.route.resource
    # (an unrouted path is the client's: never a span name of its own)
    route = resource.canonical if resource is not None else "unmatched"
    join_caller = request.app[RUNTIME].settings.trace_join_callers
    with tracing.request_span(
        request.method, route, request.headers, join_caller=join_caller
    ) as span:
        response = await handler(request)
        tracing.record_response(span, response.status)
        return response
