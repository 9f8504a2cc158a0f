"""`GET /api/openapi.json`: an OpenAPI 3.1 document of the REST and WebSocket API.

Built from `OPERATIONS` (`http/api_operations.py`), a declarative table kept
next to `routes.py` (a test checks both list the same routes), and from the pydantic models in
`minidevin.runtime.schemas`: request bodies in validation mode, responses in
serialization mode, every nested model collected into `components/schemas`.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from minidevin import __version__
from minidevin.http.api_operations import (
    AUTHENTICATED,
    ERRORS,
    IDEMPOTENCY_KEY,
    LIMIT,
    OPENAPI_PATH,
    OPERATIONS,
    PAGE_HEADERS,
    PATH_PARAMETERS,
    REF,
    REPLAYED_HEADERS,
    STATUS_TEXT,
    Operation,
    Param,
)
from minidevin.http.idempotency import (
    IDEMPOTENT_ROUTES,
)
from minidevin.runtime import schemas
from minidevin.runtime.event_types import EVENT_TYPES

routes = web.RouteTableDef()


class _Components:
    """Model schemas gathered into `components/schemas`, each added once."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: Literal["validation", "serialization"]) -> Any:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        for name, definition in schema.pop("$defs", {}).items():
            self._add(name, definition)
        self._add(model.__name__, schema)
        return {"$ref": REF.format(model=model.__name__)}

    def _add(self, name: str, schema: dict[str, Any]) -> None:
        known = self.schemas.setdefault(name, schema)
        if known != schema:  # the same name in two shapes would make a `$ref` ambiguous
            raise ValueError(f"schema {name!r} differs between its uses")


def _parameters(operation: Operation) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in operation.path.split("/") if part.startswith("{")]
    params = [Param(name, "path", PATH_PARAMETERS[name], required=True) for name in names]
    if _idempotent(operation):
        params.append(IDEMPOTENCY_KEY)
    return [
        {
            "name": param.name,
            "in": param.location,
            "required": param.required,
            "description": param.description,
            "schema": param.schema,
        }
        for param in [*params, *operation.query]
    ]


def _idempotent(operation: Operation) -> bool:
    return (operation.method.upper(), operation.path) in IDEMPOTENT_ROUTES


def _success(operation: Operation, components: _Components) -> dict[str, Any]:
    if operation.status == 101:
        return {"description": "Switching Protocols: the connection is now a WebSocket"}
    answer: dict[str, Any] = {"description": STATUS_TEXT[operation.status]}
    if operation.content is not None:
        answer["content"] = operation.content
    elif operation.response is not None:
        schema = components.ref(operation.response, "serialization")
        if operation.many:
            schema = {"type": "array", "items": schema}
        answer["content"] = {"application/json": {"schema": schema}}
    if LIMIT in operation.query:
        answer["headers"] = PAGE_HEADERS
    if _idempotent(operation):
        answer["headers"] = REPLAYED_HEADERS
    return answer


def _operation(operation: Operation, components: _Components) -> dict[str, Any]:
    error = components.ref(schemas.ErrorBody, "serialization")
    responses = {str(operation.status): _success(operation, components)}
    errors = {*operation.errors, *((409, 422) if _idempotent(operation) else ())}
    for status in sorted(errors):
        responses[str(status)] = {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": error}},
        }
    document: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "security": [dict(requirement) for requirement in operation.security],
    }
    if operation.description:
        document["description"] = operation.description
    parameters = _parameters(operation)
    if parameters:
        document["parameters"] = parameters
    if operation.body is not None:
        document["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": components.ref(operation.body, "validation")}
            },
        }
    document["responses"] = responses
    return document


def _event_schemas(components: _Components) -> None:
    """Each WebSocket message type (`runtime/event_types.py`) and their union."""
    names = []
    for model in EVENT_TYPES:
        name = "".join(part.title() for part in model.type.split("_")) + "Event"
        schema = model.model_json_schema(ref_template=REF, mode="serialization")
        for definition_name, definition in schema.pop("$defs", {}).items():
            components._add(definition_name, definition)
        schema["title"], schema["description"] = name, model.summary
        schema["properties"] = {
            "type": {"const": model.type},
            **schema.get("properties", {}),
            **STREAM_FIELDS,
        }
        schema["required"] = ["type", *schema.get("required", []), "timestamp"]
        components._add(name, schema)
        names.append(name)
    refs = [{"$ref": REF.format(model=name)} for name in names]
    mapping = {
        model.type: REF.format(model=name) for model, name in zip(EVENT_TYPES, names, strict=True)
    }
    components._add(
        "TaskStreamMessage",
        {"oneOf": refs, "discriminator": {"propertyName": "type", "mapping": mapping}},
    )


EVERY = "on every event of the log; not on an `error` answering a client message"
STREAM_FIELDS: dict[str, Any] = {
    "timestamp": {"type": "string", "format": "date-time"},
    "seq": {"type": "integer", "minimum": 1, "description": f"The event's number ({EVERY})"},
    "task_id": {"type": "string", "description": f"The task's id ({EVERY})"},
}


@functools.cache
def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once; treat it as read-only)."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method] = _operation(operation, components)
    _event_schemas(components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "minidevin",
            "version": __version__,
            "description": "REST and WebSocket API of minidevin, a runtime for autonomous "
            "coding agents. Every failure answers `{detail, code, timestamp}` (`ErrorBody`).",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from POST /api/auth/login.",
                },
                "apiKeyAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "A key from POST /api/auth/api-keys.",
                },
            },
        },
        "security": [dict(requirement) for requirement in AUTHENTICATED],
    }


@functools.cache
def _document_bytes() -> bytes:
    return json.dumps(build_document()).encode()


@routes.get(OPENAPI_PATH)
async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")
