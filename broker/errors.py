"""One error hierarchy, mapped to HTTP in one place (`broker.api.errors.install_handlers`).

Services raise `BrokerError` subclasses with a machine-readable `code`, a human `message`
and optional `details`; they never raise `HTTPException`. Every error response has the shape
`{"error": {"code": ..., "message": ..., "details": ...}}` and never carries a traceback: the
catch-all handler logs the exception server-side and answers a bare 500.
"""

from __future__ import annotations

from typing import Any



class BrokerError(Exception):
    status: int = 400
    code: str = "BAD_REQUEST"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details if details is not None else {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class NotFound(BrokerError):
    status, code = 404, "NOT_FOUND"


class Conflict(BrokerError):
    status, code = 409, "CONFLICT"


class Invalid(BrokerError):
    status, code = 422, "INVALID"


class Unauthorized(BrokerError):
    status, code = 401, "UNAUTHORIZED"


class Forbidden(BrokerError):
    status, code = 403, "FORBIDDEN"


class PreconditionFailed(BrokerError):
    status, code = 412, "PRECONDITION_FAILED"


class PayloadTooLarge(BrokerError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class RateLimited(BrokerError):
    status, code = 429, "RATE_LIMITED"


class Unavailable(BrokerError):
    status, code = 503, "UNAVAILABLE"


class InvalidTransition(Conflict):
    """A job state change the state machine forbids (e.g. out of a terminal state)."""

    code = "INVALID_TRANSITION"


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Turn pydantic's error list into one readable sentence plus per-field details."""
    fields = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
        # a JSON decode error's loc is ("body", char offset): the offset is not a field name
        where = "body" if e.get("type") == "json_invalid" else (".".join(loc) or "body")
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "extra_forbidden":
            msg = "unknown or server-owned field; remove it"
        elif e.get("type") == "missing":
            msg = "field required"
        fields.append({"field": where, "message": msg, "type": e.get("type", "")})
    text = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:10])
    if len(fields) > 10:
        text += f"; and {len(fields) - 10} more"
    return "invalid request: " + text, fields
