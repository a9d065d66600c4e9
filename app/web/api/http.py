"""HTTP mechanics the routes share: conditional GETs and cursor pagination.

- ``conditional``: a strong ETag computed from the body bytes; ``If-None-Match`` with a
  matching tag (or ``*``) gets 304 and no body. ``Cache-Control: no-cache`` tells browsers to
  keep the body but revalidate it every time, which then costs a 304.
- ``Pagination.respond``: the page's rows stay the JSON list the body always was; the next
  page is named by ``Link: <...>; rel="next"`` and ``X-Next-Cursor`` (none on the last page).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request, Response
from starlette.datastructures import URL

from app.services.pages import Page

JSON = "application/json"
T = TypeVar("T")

_ETAG = {
    "ETag": {
        "description": "the body's strong validator: send it back in If-None-Match",
        "schema": {"type": "string"},
    }
}
#: the OpenAPI of a route answered with ``conditional``: ``@router.get(..., **CONDITIONAL)``
CONDITIONAL: dict[str, Any] = {
    "responses": {
        200: {"headers": _ETAG},
        304: {"description": "Not modified: the If-None-Match tag is current", "headers": _ETAG},
    },
    "openapi_extra": {
        "parameters": [
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "a tag of an earlier answer: 304, and no body, while it is current",
                # a header value: visible ASCII (entity tags, commas, W/ prefixes)
                "schema": {"type": "string", "pattern": "^[!-~]+( [!-~]+)*$", "maxLength": 1000},
            }
        ]
    },
}


def located(status: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route whose ``status`` answer names the object it made in
    a ``Location`` header."""
    where = {"description": "the object's URL", "schema": {"type": "string"}}
    return {status: {"headers": {"Location": where}}}


def etag(body: bytes) -> str:
    """A strong validator of ``body``: the first 128 bits of its sha256, quoted."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def none_match(header: str, tag: str) -> bool:
    """``If-None-Match`` compares weakly (RFC 9110, 13.1.2): a W/ prefix does not matter."""
    if header.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == tag for t in header.split(","))


def conditional(request: Request, body: bytes, media_type: str = JSON) -> Response:
    """``body`` with its ETag, or 304 with no body when the client already holds it."""
    tag = etag(body)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    sent = request.headers.get("if-none-match")
    if sent is not None and none_match(sent, tag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


@dataclass(frozen=True)
class Pagination:
    """A list request's ``?limit=&cursor=`` and its URL (to link the next page)."""

    limit: int
    cursor: str | None
    url: URL

    def respond(self, response: Response, page: Page[T]) -> Sequence[T]:
        """The page's rows; the next page's cursor goes into the headers."""
        if page.next_cursor is not None:
            following = self.url.include_query_params(cursor=page.next_cursor, limit=self.limit)
            response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
            response.headers["X-Next-Cursor"] = page.next_cursor
        return page.items
