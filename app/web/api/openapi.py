"""The OpenAPI document says what every operation can answer, errors included.

FastAPI documents a route's success and its own 422; this adds, from what each route is,
the problems ``app.errors`` sends (``application/problem+json``, one ``ProblemDetails``
schema) and the API key. What applies is read from the route, so a new route is described
without touching this module:

- behind the key (``require_key`` among its dependencies): the bearer scheme, 401 and 429,
  and 403 when it changes something (a key's role, a shared object, a cookie without its
  CSRF token);
- a path parameter, or a JSON body that names other objects (``*_id``, ``*_ids``): 404;
- a change (POST, PUT, PATCH, DELETE): 409;
- POST, PUT, PATCH (``app.web.api.limits.BodyGuard`` caps every body): 413, and with a body 400
  (a body that cannot be parsed at all);
- any parameter or body: 422, the problem replacing FastAPI's ``HTTPValidationError``;
- every operation: 503 past the request timeout (``app.web.timeouts``), and with a body 408;
- paginated (``get_pagination``): the ``Link`` and ``X-Next-Cursor`` headers of its 200.

A status a route declares itself (``responses={...}``, e.g. a 503 when it waits on a worker)
with no content of its own gets the problem's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from app.web.api.deps import get_pagination, require_key
from app.web.api.limits import BODY_METHODS
from app.web.problems import PROBLEM

SCHEME = "apiKey"
PROBLEM_SCHEMA = "ProblemDetails"
CHANGES = BODY_METHODS | {"DELETE"}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")

PROBLEM_DETAILS: dict[str, Any] = {
    "title": PROBLEM_SCHEMA,
    "description": "An error a client can act on (RFC 9457): the status, a short title and "
    "what exactly was wrong.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "description": "always about:blank: the status and title say what kind of problem",
        },
        "title": {"type": "string", "description": "the status's short name"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "this occurrence: what to change"},
        "errors": {
            "type": "array",
            "items": {"type": "string"},
            "description": "request validation only: each invalid field, as 'where: what'",
        },
    },
}

DESCRIPTIONS = {
    400: "The body could not be parsed at all.",
    401: "No API key, or an unknown or revoked one: send 'Authorization: Bearer <key>'.",
    403: "The key's role does not allow this change, the object is shared and read-only, or "
    "a request authorised by the dashboard's cookie lacks its CSRF token.",
    404: "No such object (an object of another tenant is not found either).",
    409: "The change conflicts with what is stored, e.g. a name already taken.",
    413: "The body is larger than the upload limit (TB_MAX_UPLOAD_MB).",
    422: "The request is invalid: the detail says what to change; for a malformed field "
    "`errors` lists each one.",
    429: "This key made too many requests this minute (TB_RATE_LIMIT_PER_MIN), or its tenant "
    "has too many rankings under way: retry after Retry-After seconds.",
    408: "The client stopped sending the body for longer than TB_REQUEST_TIMEOUT_S.",
    503: "The server took longer than TB_REQUEST_TIMEOUT_S on the request (nothing was "
    "changed), or a worker or the task queue cannot be reached; try again later.",
}

HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {
        "Retry-After": {
            "description": "seconds until this key may send again",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}

PAGE_HEADERS: dict[str, Any] = {
    "Link": {
        "description": 'the next page: `<url>; rel="next"` (none on the last page)',
        "schema": {"type": "string"},
    },
    "X-Next-Cursor": {
        "description": "the next page's cursor (none on the last page)",
        "schema": {"type": "string"},
    },
}


@dataclass(frozen=True)
class Shape:
    """What a route is, as far as its possible answers go."""

    keyed: bool
    has_params: bool
    has_path_params: bool
    has_body: bool
    paginated: bool

    @classmethod
    def of(cls, route: RouteContext) -> Shape:
        """``route``: an ``APIRoute`` as included in the app (its routers' dependencies too)."""
        dependants = list(_walk(route.dependant))
        calls = {d.call for d in dependants}
        params = [
            p
            for d in dependants
            for p in (*d.path_params, *d.query_params, *d.header_params, *d.cookie_params)
        ]
        return cls(
            keyed=require_key in calls,
            has_params=bool(params) or route.body_field is not None,
            has_path_params=any(d.path_params for d in dependants),
            has_body=route.body_field is not None,
            paginated=get_pagination in calls,
        )


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _walk(sub)


def install(app: FastAPI) -> None:
    """From now on ``app.openapi()`` (and ``/openapi.json``) is the described document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(build(), app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe(document: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    """``document`` (FastAPI's, for ``app``) with every operation's problems and security."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})[PROBLEM_SCHEMA] = PROBLEM_DETAILS
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "API key",
        "description": "`transferbench apikey create NAME` prints one; send it as "
        "'Authorization: Bearer <key>'.",
    }
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        shape = Shape.of(route)
        for method in route.methods or ():
            operation = document["paths"][route.path_format][method.lower()]
            _describe_operation(operation, method, shape, components["schemas"])
    _drop_unused(document, _FASTAPI_VALIDATION)
    return document


def statuses(method: str, shape: Shape, body_schema: dict[str, Any] | None) -> set[int]:
    """The problems an operation of this shape can answer."""
    found: set[int] = {503}  # app.web.timeouts: past TB_REQUEST_TIMEOUT_S
    if shape.keyed:
        found |= {401, 429}
        if method in CHANGES:
            found.add(403)
    if shape.has_path_params or (body_schema is not None and _names_objects(body_schema)):
        found.add(404)
    if method in CHANGES:
        found.add(409)
    if method in BODY_METHODS:
        found |= {408, 413}
        if shape.has_body:
            found.add(400)
    if shape.has_params:
        found.add(422)
    return found


def _describe_operation(
    operation: dict[str, Any], method: str, shape: Shape, schemas: dict[str, Any]
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    body_schema = _json_body_schema(operation, schemas)
    for status in statuses(method, shape, body_schema):
        responses.setdefault(str(status), {})
    for code, response in responses.items():
        if code.isdigit() and int(code) >= 400:
            _problem_response(int(code), response)
        elif code == "200" and shape.paginated:
            response.setdefault("headers", {}).update(PAGE_HEADERS)
    operation["responses"] = dict(sorted(responses.items()))
    if shape.keyed:
        operation["security"] = [{SCHEME: []}]


def _problem_response(status: int, response: dict[str, Any]) -> None:
    content = response.get("content") or {}
    if not content or _is_fastapi_validation(content):
        response["content"] = {PROBLEM: {"schema": {"$ref": _ref(PROBLEM_SCHEMA)}}}
    description = response.get("description")
    if not description or description in _default_descriptions(status):
        response["description"] = DESCRIPTIONS.get(status, HTTPStatus(status).phrase)
    if status in HEADERS:
        response.setdefault("headers", {}).update(HEADERS[status])


def _default_descriptions(status: int) -> set[str]:
    """What FastAPI writes when a route gives no description of its own."""
    return {HTTPStatus(status).phrase, "Validation Error", "Additional Response"}


def _is_fastapi_validation(content: dict[str, Any]) -> bool:
    schema = content.get("application/json", {}).get("schema", {})
    return len(content) == 1 and schema.get("$ref") == _ref(_FASTAPI_VALIDATION[0])


def _json_body_schema(operation: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {})
    if any(form in content for form in _FORMS):
        return None  # form fields are files and names, never references to other objects
    schema = content.get("application/json", {}).get("schema")
    return _resolve(schema, schemas) if schema is not None else None


def _names_objects(schema: dict[str, Any]) -> bool:
    """A body that names stored objects by id (a dataset to rank, models to score)."""
    properties = schema.get("properties", {})
    return any(name.endswith(("_id", "_ids")) for name in properties)


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """The object schema behind a reference, or behind the items of an array body."""
    for _ in range(8):  # a body is a model, or a list of models
        if "$ref" in schema:
            schema = schemas.get(schema["$ref"].rsplit("/", 1)[-1], {})
        elif schema.get("type") == "array" and isinstance(schema.get("items"), dict):
            schema = schema["items"]
        else:
            break
    return schema


def _drop_unused(document: dict[str, Any], names: tuple[str, ...]) -> None:
    """Remove component schemas nothing refers to any longer (FastAPI's validation error)."""
    schemas = document.get("components", {}).get("schemas", {})
    for name in names:
        body = dict(schemas)
        body.pop(name, None)
        others = json.dumps({**document, "components": {"schemas": body}})
        if _ref(name) not in others:
            schemas.pop(name, None)


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"
