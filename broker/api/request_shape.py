"""Refuse requests the routes cannot take before any of them runs (pure ASGI middleware).

- A path or query string with a control character (`%00`...) -> 422 INVALID_CHARACTER (as any
  other invalid parameter value). Why:
  ids, names and filters go to the database as text, and PostgreSQL refuses a NUL in text with
  an error that used to surface as a 500; no id, slug or filter the broker issues contains one,
  so the answer is the same on every route and on SQLite and PostgreSQL alike.
- A body on POST/PUT/PATCH whose Content-Type is not JSON (`application/json` or `+json`)
  -> 415 UNSUPPORTED_MEDIA_TYPE. Why: every body the API takes is JSON, and FastAPI would
  otherwise hand a `text/plain` body to the JSON parser anyway and accept it. A body without a
  Content-Type is read as JSON (what FastAPI does, and what minimal clients send).

It wraps the submit fast path, so both submit paths answer alike.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestShape:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        where = _bad_characters(scope)
        if where is not None:
            return await _answer(send, 422, "INVALID_CHARACTER",
                                 f"the request {where} contains a control character (such as %00); "
                                 "ids, names and filters never do", {"where": where})
        if scope["method"] in _BODY_METHODS:
            ctype = _unsupported_type(scope)
            if ctype is not None:
                return await _answer(send, 415, "UNSUPPORTED_MEDIA_TYPE",
                                     f"the body must be JSON (Content-Type: application/json), not {ctype!r}",
                                     {"content_type": ctype})
        return await self.app(scope, receive, send)


def _bad_characters(scope: dict) -> str | None:
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    if _CONTROL.search(unquote_to_bytes(raw)):
        return "path"
    query = scope.get("query_string") or b""
    if query and _CONTROL.search(unquote_to_bytes(query)):
        return "query"
    return None


def _unsupported_type(scope: dict) -> str | None:
    """The Content-Type of a non-empty body that is not JSON, else None."""
    ctype, has_body = None, False
    for k, v in scope["headers"]:
        if k == b"content-type":
            ctype = v.decode("latin-1")
        elif k == b"content-length":
            has_body = has_body or v.strip() not in (b"0", b"")
        elif k == b"transfer-encoding":
            has_body = True
    if ctype is None or not has_body:
        return None
    media = ctype.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return None
    return ctype


async def _answer(send: Any, status: int, code: str, message: str, details: dict) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message, "details": details}})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
