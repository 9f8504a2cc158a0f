"""Typed keys for what the application and requests share."""

from __future__ import annotations

from aiohttp import web

from minidevin.api import Runtime
from minidevin.runtime.auth import Principal

RUNTIME = web.AppKey("runtime", Runtime)
PRINCIPAL = web.RequestKey("principal", Principal)
WEBSOCKETS = web.AppKey("websockets", set)
# (kind, id, user) -> (store generation, JSON body) of polled details
READ_CACHE = web.AppKey("read_cache", dict)

__all__ = ["PRINCIPAL", "READ_CACHE", "RUNTIME", "WEBSOCKETS", "Principal"]
