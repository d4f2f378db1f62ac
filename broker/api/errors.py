"""Errors to HTTP, in one place: every `BrokerError`, validation error and unexpected exception
becomes the one error shape `{"error": {"code", "message", "details"}}` (never a traceback).
Database exceptions go through `broker.services.db_errors.translate`: unreachable -> 503
DATABASE_UNAVAILABLE with Retry-After, a refused value -> 422.

The hierarchy itself is `broker.errors` (services raise it and know nothing of HTTP); this
module is the only one that maps it to responses.
"""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.api.json import JSON as ORJSONResponse
from broker.errors import BrokerError, validation_message
from broker.services.db_errors import DB_EXCEPTIONS, translate

log = logging.getLogger("broker.errors")

BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's HTTPException(400) detail


def install_handlers(app) -> None:
    """Map BrokerError, validation errors and anything unexpected to JSON responses."""
    @app.exception_handler(BrokerError)
    async def _broker(_request, exc: BrokerError):
        return ORJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def _database(_request, exc: Exception):
        mapped = translate(exc)
        if mapped is None:
            return _internal(exc)
        if mapped.status >= 500:
            log.warning("database unavailable: %s: %s", type(exc).__name__, str(exc).strip()[:200])
        return ORJSONResponse(mapped.body(), status_code=mapped.status, headers=mapped.headers)

    for exc_type in DB_EXCEPTIONS:  # handled inside the app: no 500, no reset connection
        app.add_exception_handler(exc_type, _database)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request, exc: RequestValidationError):
        message, fields = validation_message(list(exc.errors()))
        body = {"error": {"code": "VALIDATION_ERROR", "message": message, "details": {"fields": fields}}}
        return ORJSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:
            # FastAPI's answer to a JSON body it cannot decode (bytes that are not UTF-8). Why:
            # the same bad body as malformed JSON gets the same documented 422, not a bare 400.
            message, fields = validation_message([{"loc": ("body",), "type": "json_invalid",
                                                   "msg": "body is not valid UTF-8 JSON"}])
            body = {"error": {"code": "VALIDATION_ERROR", "message": message, "details": {"fields": fields}}}
            return ORJSONResponse(body, status_code=422)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 401: "UNAUTHORIZED"}.get(exc.status_code, "HTTP_ERROR")
        body = {"error": {"code": code, "message": str(exc.detail), "details": {}}}
        return ORJSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):
        mapped = translate(exc)  # a database error raised outside the routes (middleware)
        if mapped is not None:
            return ORJSONResponse(mapped.body(), status_code=mapped.status, headers=mapped.headers)
        return _internal(exc)


def _internal(exc: Exception):
    log.exception("unhandled error", exc_info=exc)
    body = {"error": {"code": "INTERNAL", "message": "internal error; see the broker log", "details": {}}}
    return ORJSONResponse(body, status_code=500)
