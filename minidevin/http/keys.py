"""Typed keys for what the application and requests share."""

from __future__ import annotations

from aiohttp import web

from minidevin.api import Runtime
from minidevin.runtime.auth import Principal

RUNTIME = web.AppKey("runtime", Runtime)
PRINCIPAL = web.RequestKey("principal", Principal)
WEBSOCKETS = web.AppKey("websockets", set)

__all__ = ["PRINCIPAL", "RUNTIME", "WEBSOCKETS", "Principal"]
