"""Errors to HTTP, in one place: every `BrokerError`, validation error and unexpected exception
becomes the one error shape `{"error": {"code", "message", "details"}}` (never a traceback).

The hierarchy itself is `broker.errors` (services raise it and know nothing of HTTP); this
module is the only one that maps it to responses.
"""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.api.json import JSON as ORJSONResponse
from broker.errors import BrokerError, validation_message

log = logging.getLogger("broker.errors")

BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's HTTPException(400) detail


def install_handlers(app) -> None:
    """Map BrokerError, validation errors and anything unexpected to JSON responses."""
    @app.exception_handler(BrokerError)
    async def _broker(_request, exc: BrokerError):
        return ORJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

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
        log.exception("unhandled error", exc_info=exc)
        body = {"error": {"code": "INTERNAL", "message": "internal error; see the broker log", "details": {}}}
        return ORJSONResponse(body, status_code=500)
